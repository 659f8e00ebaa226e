"""egs/librispeech/ASR/prepare.sh stages 1-5 on a small LibriSpeech-format fixture.

Nothing is downloaded: the fixture (a few synthetic utterances in each of the 7 parts and a tiny
MUSAN layout) is written under ``tmp_path/download``, which stage 0 then finds "present".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
from lhotse import load_manifest
from test_data_prep import write_librispeech_fixture, write_musan_fixture

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "librispeech" / "ASR"
PARTS = ["dev-clean", "dev-other", "test-clean", "test-other",
         "train-clean-100", "train-clean-360", "train-other-500"]  # fmt: skip
TRAIN_PARTS = PARTS[4:]


def run_prepare(workdir: Path, *flags: str) -> subprocess.CompletedProcess:
    """Run prepare.sh from a copy of the recipe folder layout, with the venv's python3 first."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        ["bash", str(workdir / "prepare.sh"), "--dl-dir", str(workdir / "download"), *flags],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recipe folder (prepare.sh + shared/) and the fixture corpus after stages 1-5."""
    root = tmp_path_factory.mktemp("librispeech")
    shutil.copy(RECIPE / "prepare.sh", root / "prepare.sh")
    (root / "shared").symlink_to((RECIPE / "shared").resolve())
    texts = write_librispeech_fixture(root / "download", PARTS, utts_per_part=2)
    (root / "texts.txt").write_text("\n".join(t for p in TRAIN_PARTS for t in texts[p]) + "\n")
    write_musan_fixture(root / "download", duration_s=12.0)
    result = run_prepare(root, "--stage", "0", "--stop-stage", "5", "--nj", "1",
                         "--vocab-size", "40")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


def test_stage1_and_2_manifests(workdir: Path) -> None:
    manifests = workdir / "data" / "manifests"
    for part in PARTS:
        recordings = load_manifest(manifests / f"librispeech_recordings_{part}.jsonl.gz")
        supervisions = load_manifest(manifests / f"librispeech_supervisions_{part}.jsonl.gz")
        assert len(recordings) == len(supervisions) == 2
    for part in ("music", "speech", "noise"):
        assert len(load_manifest(manifests / f"musan_recordings_{part}.jsonl.gz")) == 1


def test_stage3_fbank_perturbation_and_train_all_shuf(workdir: Path) -> None:
    fbank = workdir / "data" / "fbank"
    for part in PARTS:
        cuts = load_manifest(fbank / f"librispeech_cuts_{part}.jsonl.gz")
        assert len(cuts) == (6 if part in TRAIN_PARTS else 2)
        assert all(c.has_features and c.num_features == 80 for c in cuts)
    shuffled = load_manifest(fbank / "librispeech_cuts_train-all-shuf.jsonl.gz")
    assert len(shuffled) == 18
    assert sum(c.id.endswith("_sp0.9") for c in shuffled) == 6


def test_stage4_musan_fbank(workdir: Path) -> None:
    cuts = load_manifest(workdir / "data" / "fbank" / "musan_cuts.jsonl.gz")
    assert len(cuts) == 3 and all(c.has_features for c in cuts)


def test_stage5_bpe(workdir: Path) -> None:
    lang = workdir / "data" / "lang_bpe_40"
    transcript = (lang / "transcript_words.txt").read_text().split("\n")
    assert sorted(filter(None, transcript)) == sorted(
        filter(None, (workdir / "texts.txt").read_text().split("\n"))
    )
    sp = spm.SentencePieceProcessor(model_file=str(lang / "bpe.model"))
    assert sp.get_piece_size() == 40 and sp.id_to_piece(0) == "<blk>"
    assert (lang / "tokens.txt").read_text().splitlines()[2] == "<unk> 2"


def test_rerun_is_a_noop(workdir: Path) -> None:
    data = workdir / "data"
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    result = run_prepare(workdir, "--stage", "1", "--stop-stage", "5", "--vocab-size", "40")
    assert result.returncode == 0, result.stderr[-3000:]
    after = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    assert after == before


def test_bad_option_is_rejected(workdir: Path) -> None:
    result = run_prepare(workdir, "--no-such-option", "1")
    assert result.returncode != 0


def test_mini_librispeech_and_data_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--mini-libri true: the mini parts go through stages 0-5 and feed the data module (run
    from the recipe folder, like train.py: feature paths are relative to it)."""
    import argparse

    from icefall.data.datamodule import AsrDataModule

    shutil.copy(RECIPE / "prepare.sh", tmp_path / "prepare.sh")
    (tmp_path / "shared").symlink_to((RECIPE / "shared").resolve())
    write_librispeech_fixture(tmp_path / "download", ["train-clean-5", "dev-clean-2"], 4)
    write_musan_fixture(tmp_path / "download", duration_s=6.0)
    result = run_prepare(tmp_path, "--mini-libri", "true", "--vocab-size", "30", "--nj", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fbank = tmp_path / "data" / "fbank"
    assert len(load_manifest(fbank / "librispeech_cuts_train-clean-5.jsonl.gz")) == 12
    assert not (fbank / "librispeech_cuts_train-all-shuf.jsonl.gz").exists()
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    AsrDataModule.add_arguments(parser)
    args = parser.parse_args(
        ["--corpus", "librispeech", "--mini-libri", "true", "--manifest-dir", "data/fbank",
         "--num-workers", "0", "--max-duration", "10", "--drop-last", "false"]
    )  # fmt: skip
    data = AsrDataModule(args)
    ids = [
        c.id for b in data.train_dataloaders(data.train_cuts()) for c in b["supervisions"]["cut"]
    ]
    assert len(ids) == 12
    assert len(data.valid_cuts().to_eager()) == 4
