"""Tests of the data-preparation library: fbank extraction CLIs, BPE training, validation.

The helpers ``write_librispeech_fixture`` and ``write_musan_fixture`` build small corpora in the
LibriSpeech and MUSAN layouts; test_librispeech_prepare.py and test_datamodule.py use them too.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import sentencepiece as spm
import soundfile as sf
from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest

from icefall.data import compute_fbank, compute_fbank_musan, train_bpe, validate_manifest
from icefall.data.fbank import fbank_config
from icefall.data.validate import validate_cuts

SAMPLE_RATE = 16000
WORDS = (
    "THE QUICK BROWN FOX JUMPS OVER LAZY DOG SPEECH RECOGNITION TOOLKIT WITHOUT PAIN "
    "SMALL CORPUS MADE LOCALLY FOR TESTS ONLY"
).split()


def synth_audio(rng: np.random.Generator, duration_s: float) -> np.ndarray:
    """A speech-like test signal: noise-modulated tones, shape (num_samples,), float32."""
    n = int(duration_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 3000, size=3))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t)
    noise = 0.05 * rng.standard_normal(n)
    return (0.1 * tones * envelope + noise).astype(np.float32)


def write_librispeech_fixture(
    root: Path,
    parts: Sequence[str],
    utts_per_part: int = 4,
    seed: int = 0,
    durations: Sequence[float] = (1.2, 1.6, 2.0, 2.4, 2.8),
) -> Dict[str, List[str]]:
    """Write ``root/LibriSpeech/{part}/{spk}/{chapter}/{spk}-{chapter}-{utt:04d}.flac`` and
    ``{spk}-{chapter}.trans.txt`` for each part (two speakers per part).

    Returns:
      part -> list of transcript lines written for it (without utterance ids).
    """
    rng = np.random.default_rng(seed)
    texts: Dict[str, List[str]] = {}
    for part_index, part in enumerate(parts):
        texts[part] = []
        for speaker in (100 + 10 * part_index, 101 + 10 * part_index):
            chapter = 2000 + speaker
            folder = root / "LibriSpeech" / part / str(speaker) / str(chapter)
            folder.mkdir(parents=True, exist_ok=True)
            lines = []
            for utt in range(utts_per_part // 2):
                utt_id = f"{speaker}-{chapter}-{utt:04d}"
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 7))))
                duration = durations[int(rng.integers(len(durations)))]
                sf.write(folder / f"{utt_id}.flac", synth_audio(rng, duration), SAMPLE_RATE)
                lines.append(f"{utt_id} {text}\n")
                texts[part].append(text)
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return texts


def write_musan_fixture(root: Path, seed: int = 1, duration_s: float = 12.0) -> Path:
    """Write a tiny MUSAN layout (one file each of music, speech, noise) under ``root/musan``."""
    rng = np.random.default_rng(seed)
    musan = root / "musan"
    for part, sub in (("music", "fma"), ("speech", "librivox"), ("noise", "free-sound")):
        folder = musan / part / sub
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{part}-{sub}-0000"
        sf.write(folder / f"{name}.wav", synth_audio(rng, duration_s), SAMPLE_RATE)
        if part == "music":
            (folder / "ANNOTATIONS").write_text(f"{name} classical N composer\n")
    return musan


def write_manifests(root: Path, manifest_dir: Path, prefix: str, parts: Sequence[str]) -> None:
    """lhotse manifests ``{prefix}_{recordings,supervisions}_{part}.jsonl.gz`` for a fixture."""
    from lhotse.recipes import prepare_librispeech

    manifests = prepare_librispeech(root / "LibriSpeech", dataset_parts=list(parts))
    manifest_dir.mkdir(parents=True, exist_ok=True)
    for part, pair in manifests.items():
        pair["recordings"].to_file(manifest_dir / f"{prefix}_recordings_{part}.jsonl.gz")
        pair["supervisions"].to_file(manifest_dir / f"{prefix}_supervisions_{part}.jsonl.gz")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixture corpus with manifests and fbank cuts (train perturbed) for prefix ``toy``."""
    root = tmp_path_factory.mktemp("prep")
    write_librispeech_fixture(root, ["train-clean-5", "dev-clean-2"], utts_per_part=4)
    write_manifests(root, root / "manifests", "toy", ["train-clean-5", "dev-clean-2"])
    compute_fbank.main(
        [
            "--manifest-dir", str(root / "manifests"),
            "--output-dir", str(root / "fbank"),
            "--prefix", "toy",
            "--parts", "train-clean-5", "dev-clean-2",
            "--perturb-speed-parts", "train-clean-5",
            "--train-all-shuf-parts", "train-clean-5", "dev-clean-2",
        ]
    )  # fmt: skip
    return root


def test_fbank_config_matches_sherpa_options() -> None:
    config = fbank_config()
    assert (config.num_filters, config.sampling_rate) == (80, 16000)
    assert (config.dither, config.snip_edges, config.high_freq) == (0.0, False, -400.0)


def test_compute_fbank_writes_perturbed_cuts_with_features(prepared: Path) -> None:
    train = load_manifest(prepared / "fbank" / "toy_cuts_train-clean-5.jsonl.gz")
    dev = load_manifest(prepared / "fbank" / "toy_cuts_dev-clean-2.jsonl.gz")
    assert len(train) == 3 * 4 and len(dev) == 4
    originals = {c.id: c for c in train if "_sp" not in c.id}
    for factor in ("0.9", "1.1"):
        for cut in (c for c in train if c.id.endswith(f"_sp{factor}")):
            original = originals[cut.id[: -len(f"_sp{factor}")]]
            assert cut.duration == pytest.approx(original.duration / float(factor), abs=0.01)
    for cut in dev:
        feats = cut.load_features()
        assert feats.shape == (cut.num_frames, 80)
        assert cut.num_frames == pytest.approx(cut.duration * 100, abs=1)
    assert list((prepared / "fbank" / "toy_feats_train-clean-5").glob("*.lca"))


def test_train_all_shuf_holds_every_cut_once(prepared: Path) -> None:
    fbank = prepared / "fbank"
    shuffled = [c.id for c in load_manifest(fbank / "toy_cuts_train-all-shuf.jsonl.gz")]
    parts = [
        c.id
        for p in ("train-clean-5", "dev-clean-2")
        for c in load_manifest(fbank / f"toy_cuts_{p}.jsonl.gz")
    ]  # noqa: E501
    assert sorted(shuffled) == sorted(parts)
    assert shuffled != parts


def test_compute_fbank_skips_done_parts(prepared: Path) -> None:
    output = prepared / "fbank" / "toy_cuts_dev-clean-2.jsonl.gz"
    before = output.stat().st_mtime_ns
    compute_fbank.main(
        ["--manifest-dir", str(prepared / "manifests"), "--output-dir", str(prepared / "fbank"),
         "--prefix", "toy", "--parts", "dev-clean-2"]
    )  # fmt: skip
    assert output.stat().st_mtime_ns == before


def test_compute_fbank_skips_and_counts_corrupt_and_empty_audio(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_librispeech_fixture(tmp_path, ["dev-clean"], utts_per_part=4)
    write_manifests(tmp_path, tmp_path / "manifests", "toy", ["dev-clean"])
    flacs = sorted((tmp_path / "LibriSpeech").rglob("*.flac"))
    flacs[0].write_bytes(b"fLaC this is not audio")
    sf.write(flacs[1], np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    caplog.set_level("INFO")
    compute_fbank.main(
        ["--manifest-dir", str(tmp_path / "manifests"), "--output-dir", str(tmp_path / "fbank"),
         "--prefix", "toy", "--parts", "dev-clean", "--perturb-speed", "false"]
    )  # fmt: skip
    cuts = load_manifest(tmp_path / "fbank" / "toy_cuts_dev-clean.jsonl.gz")
    assert len(cuts) == 2
    assert "skipped 2 (unreadable audio: 2)" in caplog.text


def test_compute_fbank_musan_windows(tmp_path: Path) -> None:
    from lhotse.recipes import prepare_musan

    musan = write_musan_fixture(tmp_path, duration_s=12.0)
    prepare_musan(musan, tmp_path / "manifests")
    compute_fbank_musan.main(
        ["--manifest-dir", str(tmp_path / "manifests"), "--output-dir", str(tmp_path / "fbank")]
    )
    cuts = load_manifest(tmp_path / "fbank" / "musan_cuts.jsonl.gz")
    # 12 s -> one 10 s window per file (the 2 s remainder is shorter than 5 s).
    assert len(cuts) == 3
    assert all(c.duration == pytest.approx(10.0) and c.has_features for c in cuts)
    assert cuts[0].load_features().shape == (1000, 80)


def test_train_bpe_ids_tokens_and_idempotence(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    transcript = tmp_path / "transcript.txt"
    lines = [" ".join(rng.choice(WORDS, size=8)) for _ in range(200)]
    transcript.write_text("\n".join(lines) + "\n")
    lang = tmp_path / "lang_bpe_30"
    args = ["--transcript", str(transcript), "--lang-dir", str(lang), "--vocab-size", "30"]
    train_bpe.main(args)
    sp = spm.SentencePieceProcessor(model_file=str(lang / "bpe.model"))
    assert sp.get_piece_size() == 30
    assert [sp.id_to_piece(i) for i in range(3)] == ["<blk>", "<sos/eos>", "<unk>"]
    tokens = [line.split() for line in (lang / "tokens.txt").read_text().splitlines()]
    assert tokens[:3] == [["<blk>", "0"], ["<sos/eos>", "1"], ["<unk>", "2"]]
    assert [int(i) for _, i in tokens] == list(range(30))
    assert sp.decode(sp.encode(lines[0])) == lines[0]
    before = (lang / "bpe.model").stat().st_mtime_ns
    train_bpe.main(args)
    assert (lang / "bpe.model").stat().st_mtime_ns == before


def test_train_bpe_too_large_vocab_gives_clear_error(tmp_path: Path) -> None:
    transcript = tmp_path / "t.txt"
    transcript.write_text("A SHORT LINE\n")
    with pytest.raises(SystemExit, match="smaller --vocab-size"):
        train_bpe.main(["--transcript", str(transcript), "--lang-dir", str(tmp_path / "l"),
                        "--vocab-size", "500"])  # fmt: skip


def test_validate_manifest_reports_problems(prepared: Path, tmp_path: Path) -> None:
    good = prepared / "fbank" / "toy_cuts_dev-clean-2.jsonl.gz"
    assert validate_manifest.main([str(good), "--read-data"]) == 0
    cuts = list(load_manifest(good))
    cuts[0].supervisions[0].text = " "
    cuts[1].supervisions[0].duration = cuts[1].duration + 1.0
    cuts[2].features = None
    bad = tmp_path / "bad.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(bad)
    report = validate_cuts(load_manifest(bad), name="bad")
    assert report.problems["empty text"] == 1
    assert report.problems["supervision outside cut"] == 1
    assert report.problems["no features"] == 1
    assert "empty text: 1" in report.format()
    assert validate_manifest.main([str(bad)]) == 1


def test_manifest_names_follow_icefall(prepared: Path) -> None:
    names = sorted(p.name for p in (prepared / "manifests").iterdir())
    assert "toy_recordings_train-clean-5.jsonl.gz" in names
    with gzip.open(prepared / "fbank" / "toy_cuts_dev-clean-2.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    assert first["features"]["storage_type"] == "lilcom_chunky"
    assert isinstance(
        load_manifest(prepared / "manifests" / "toy_recordings_dev-clean-2.jsonl.gz"), RecordingSet
    )  # noqa: E501
    assert isinstance(
        load_manifest(prepared / "manifests" / "toy_supervisions_dev-clean-2.jsonl.gz"),
        SupervisionSet,
    )  # noqa: E501


def test_parallel_extraction_matches_single_job(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icefall.data import fbank

    monkeypatch.setattr(fbank, "MIN_CUTS_PER_JOB", 1)
    cuts = CutSet.from_manifests(
        recordings=load_manifest(prepared / "manifests" / "toy_recordings_dev-clean-2.jsonl.gz"),
        supervisions=load_manifest(
            prepared / "manifests" / "toy_supervisions_dev-clean-2.jsonl.gz"
        ),  # noqa: E501
    )
    one = fbank.compute_features(cuts, tmp_path / "one", tmp_path / "one.jsonl.gz", num_jobs=1)
    two = fbank.compute_features(cuts, tmp_path / "two", tmp_path / "two.jsonl.gz", num_jobs=2)
    assert one.num_done == two.num_done == 4
    assert len(list((tmp_path / "two").glob("feats-*.lca"))) == 2
    single, parallel = (
        load_manifest(tmp_path / "one.jsonl.gz"),
        load_manifest(tmp_path / "two.jsonl.gz"),
    )
    assert [c.id for c in single] == [c.id for c in parallel] == [c.id for c in cuts]
    for a, b in zip(single, parallel):
        np.testing.assert_array_equal(a.load_features(), b.load_features())
