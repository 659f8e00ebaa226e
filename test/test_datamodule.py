"""Tests of the shared data module: batches, resumable sampling, filtering and fault tolerance.

Cut files are made in ``tmp_path`` from synthetic audio (tiny-corpus names: ``tiny_cuts_{part}``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, SupervisionSegment, load_manifest
from lhotse.utils import LOG_EPSILON

from icefall.data.corpora import CORPORA, LIBRISPEECH, TINY, detect_corpus, get_corpus
from icefall.data.datamodule import AsrDataModule
from icefall.data.fbank import compute_features
from icefall.data.filters import encoder_frames, filter_cuts

SAMPLE_RATE = 16000
WORDS = "ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN".split()


def synth(rng: np.random.Generator, duration: float) -> np.ndarray:
    """Noisy tones, shape (num_samples,), float32."""
    t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
    return (0.1 * tone + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


def make_cuts(
    folder: Path, name: str, durations: Sequence[float], texts: Optional[List[str]] = None
) -> CutSet:
    """Cuts (one supervision each) over FLAC files written to ``folder``."""
    rng = np.random.default_rng(len(name))
    folder.mkdir(parents=True, exist_ok=True)
    cuts = []
    for i, duration in enumerate(durations):
        path = folder / f"{name}-{i:03d}.flac"
        sf.write(path, synth(rng, duration), SAMPLE_RATE)
        recording = Recording.from_file(path, recording_id=f"{name}-{i:03d}")
        text = texts[i] if texts else " ".join(rng.choice(WORDS, size=3))
        cut = recording.to_cut()
        cut.supervisions = [
            SupervisionSegment(
                id=recording.id,
                recording_id=recording.id,
                start=0.0,
                duration=recording.duration,
                text=text,
            )
        ]
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def write_cut_file(root: Path, corpus: str, part: str, cuts: CutSet) -> Path:
    """Compute features and write ``{root}/fbank/{corpus}_cuts_{part}.jsonl.gz``."""
    output = root / "fbank" / f"{corpus}_cuts_{part}.jsonl.gz"
    report = compute_features(cuts, root / "fbank" / f"{corpus}_feats_{part}", output)
    assert not report.failures
    return output


def parse_args(extra: Sequence[str] = ()) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    AsrDataModule.add_arguments(parser)
    return parser.parse_args(list(extra))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-corpus-like fbank folder: 24 train cuts, 4 per dev/test part, a noise cut file."""
    root = tmp_path_factory.mktemp("dm")
    durations = [1.1 + 0.15 * i for i in range(24)]
    write_cut_file(root, "tiny", "train", make_cuts(root / "wav", "train", durations))
    for part in ("dev", "test-clean", "test-other"):
        write_cut_file(root, "tiny", part, make_cuts(root / "wav", part, [1.5, 2.0, 2.5, 3.0]))
    noise = make_cuts(root / "wav", "noise", [6.0, 6.0])
    compute_features(noise, root / "fbank" / "musan_feats", root / "fbank" / "musan_cuts.jsonl.gz")
    return root


def module(corpus_dir: Path, *flags: str) -> AsrDataModule:
    base = ["--corpus", "tiny", "--manifest-dir", str(corpus_dir / "fbank"), "--num-workers", "0"]
    return AsrDataModule(parse_args(base + list(flags)))


def batch_ids(batch: Dict) -> List[str]:
    return [cut.id for cut in batch["supervisions"]["cut"]]


def test_flags_have_icefall_defaults() -> None:
    args = parse_args()
    assert args.max_duration == 200.0 and args.num_buckets == 30 and args.num_workers == 2
    assert args.bucketing_sampler and args.shuffle and args.drop_last and args.return_cuts
    assert args.enable_spec_aug and args.enable_musan and args.full_libri
    assert not args.mini_libri and not args.concatenate_cuts and not args.on_the_fly_feats
    assert args.spec_aug_time_warp_factor == 80 and args.input_strategy == "PrecomputedFeatures"
    assert args.manifest_dir == Path("data/fbank") and (args.duration_factor, args.gap) == (1, 1)


def test_corpus_detection_and_registry(tmp_path: Path) -> None:
    assert detect_corpus(tmp_path / "egs" / "tiny" / "ASR") == "tiny"
    assert detect_corpus(tmp_path / "egs" / "tiny" / "ASR" / "data") == "tiny"
    assert detect_corpus(tmp_path / "egs" / "unknown" / "ASR") == "librispeech"
    assert detect_corpus(tmp_path) == "librispeech"
    assert set(CORPORA) >= {"librispeech", "tiny"}
    assert LIBRISPEECH.train_parts(full_libri=True) == ("train-all-shuf",)
    assert LIBRISPEECH.train_parts(full_libri=False) == ("train-clean-100",)
    assert LIBRISPEECH.train_parts(mini_libri=True) == ("train-clean-5",)
    assert TINY.train_parts(full_libri=True) == ("train",)
    assert get_corpus("tiny").lang_dir == "data/lang_bpe_256"
    with pytest.raises(ValueError, match="known corpora"):
        get_corpus("nope")


def test_cut_sets_per_corpus(corpus_dir: Path) -> None:
    data = module(corpus_dir)
    assert len(data.train_cuts().to_eager()) == 24
    assert len(data.valid_cuts().to_eager()) == 4
    tests = data.test_cuts()
    assert list(tests) == ["dev", "test-clean", "test-other"]
    with pytest.raises(FileNotFoundError, match="prepare.sh"):
        AsrDataModule(
            parse_args(["--corpus", "librispeech", "--manifest-dir", str(corpus_dir)])
        ).train_cuts()  # noqa: E501


def test_train_batches_are_padded_with_expected_shapes(corpus_dir: Path) -> None:
    data = module(
        corpus_dir,
        "--max-duration",
        "8",
        "--enable-spec-aug",
        "false",
        "--enable-musan",
        "false",
        "--drop-last",
        "false",
    )
    cuts = {c.id: c for c in data.train_cuts()}
    seen = []
    for batch in data.train_dataloaders(data.train_cuts()):
        inputs, sups = batch["inputs"], batch["supervisions"]
        batch_cuts = sups["cut"]
        assert inputs.ndim == 3 and inputs.shape[0] == len(batch_cuts) and inputs.shape[2] == 80
        assert sum(c.duration for c in batch_cuts) <= 8.0
        assert inputs.shape[1] == int(sups["num_frames"].max())
        for i, cut in enumerate(batch_cuts):
            assert sups["text"][i] == cuts[cut.id].supervisions[0].text
            num_frames = int(sups["num_frames"][i])
            assert num_frames == cut.num_frames == pytest.approx(cut.duration * 100, abs=1)
            assert torch.allclose(inputs[i, :num_frames], torch.from_numpy(cut.load_features()))
            assert torch.allclose(inputs[i, num_frames:], torch.tensor(LOG_EPSILON))
        seen += batch_ids(batch)
    assert sorted(seen) == sorted(cuts)


def test_augmented_batches_keep_shapes(corpus_dir: Path) -> None:
    data = module(corpus_dir, "--max-duration", "10", "--concatenate-cuts", "true")
    batch = next(iter(data.train_dataloaders(data.train_cuts())))
    assert batch["inputs"].shape[2] == 80
    assert torch.isfinite(batch["inputs"]).all()
    assert batch["inputs"].shape[1] >= int(batch["supervisions"]["num_frames"].max())


def test_valid_and_test_loaders_cover_every_cut(corpus_dir: Path) -> None:
    data = module(corpus_dir, "--max-duration", "4")
    ids = [i for b in data.valid_dataloaders(data.valid_cuts()) for i in batch_ids(b)]
    assert sorted(ids) == sorted(c.id for c in data.valid_cuts())
    for name, cuts in data.test_cuts().items():
        ids = [i for b in data.test_dataloaders(cuts) for i in batch_ids(b)]
        assert sorted(ids) == sorted(c.id for c in cuts), name


@pytest.mark.parametrize(
    "flags,num_workers",
    [
        (["--bucketing-sampler", "true"], 1),
        (["--bucketing-sampler", "false"], 1),
        (["--bucketing-sampler", "true"], 0),
    ],
)
def test_restored_sampler_continues_with_the_next_batch(
    corpus_dir: Path, flags: List[str], num_workers: int
) -> None:
    data = module(
        corpus_dir,
        "--max-duration",
        "5",
        "--enable-musan",
        "false",
        "--enable-spec-aug",
        "false",
        "--num-workers",
        str(num_workers),
        *flags,
    )
    train = data.train_cuts()
    reference = [batch_ids(b) for b in data.train_dataloaders(train)]
    assert len(reference) >= 5
    k = 3
    loader = data.train_dataloaders(train)
    iterator = iter(loader)
    for expected in reference[:k]:
        assert batch_ids(next(iterator)) == expected
    # Workers have prefetched further batches by now; the state must describe k batches.
    state = loader.sampler.state_dict()
    del iterator, loader
    resumed = data.train_dataloaders(data.train_cuts(), sampler_state_dict=state)
    assert [batch_ids(b) for b in resumed] == reference[k:]
    # A resumed run saving again mid-epoch also resumes exactly.
    resumed = data.train_dataloaders(data.train_cuts(), sampler_state_dict=state)
    iterator = iter(resumed)
    assert batch_ids(next(iterator)) == reference[k]
    state2 = resumed.sampler.state_dict()
    again = data.train_dataloaders(data.train_cuts(), sampler_state_dict=state2)
    assert batch_ids(next(iter(again))) == reference[k + 1]


def test_filter_counts_unusable_cuts(
    corpus_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class CharTokens:
        """Stand-in for a sentencepiece processor: one token per character."""

        def encode(self, text: str) -> List[int]:
            return [ord(c) for c in text]

    durations = [2.0, 0.5, 25.0, 2.0, 1.2, 3.0]
    texts = ["ONE TWO", "ONE", "ONE", "   ", "ONE TWO THREE FOUR FIVE SIX SEVEN", "NINE TEN"]
    cuts = make_cuts(tmp_path, "f", durations + [2.0], texts + ["EIGHT"])
    cuts[6].supervisions[0].duration = 2.5  # ends after the cut
    assert encoder_frames(120) < len(texts[4])  # 29 encoder frames for 33 tokens
    caplog.set_level(logging.INFO)
    kept = filter_cuts(cuts, sp=CharTokens(), name="train")
    assert [c.id for c in kept] == ["f-000", "f-005"]
    stats = kept.data.stats
    assert stats.kept == 2
    assert stats.removed == {
        "too short": 1,
        "too long": 1,
        "empty text": 1,
        "more tokens than frames": 1,
        "invalid cut": 1,
    }
    assert "kept 2/7 cuts" in caplog.text and "more tokens than frames: 1" in caplog.text
    # Counts restart with each iteration (epoch).
    assert len(list(kept)) == 2 and kept.data.stats.num_removed == 5


def test_filter_drops_missing_or_empty_audio_for_on_the_fly(tmp_path: Path) -> None:
    cuts = make_cuts(tmp_path, "a", [2.0, 2.0, 2.0])
    paths = sorted(tmp_path.glob("a-*.flac"))
    paths[0].unlink()
    paths[1].write_bytes(b"")
    kept = filter_cuts(cuts, check_audio=True)
    assert [c.id for c in kept] == ["a-002"]
    assert kept.data.stats.removed == {"missing audio": 2}


def test_unreadable_features_are_skipped_and_counted(
    corpus_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cuts = list(load_manifest(corpus_dir / "fbank" / "tiny_cuts_dev.jsonl.gz"))
    cuts[1].features.storage_path = str(tmp_path / "missing.lca")
    (tmp_path / "fbank").mkdir()
    CutSet.from_cuts(cuts).to_file(tmp_path / "fbank" / "tiny_cuts_dev.jsonl.gz")
    data = module(tmp_path, "--max-duration", "100")
    caplog.set_level(logging.WARNING)
    batches = list(data.valid_dataloaders(data.valid_cuts()))
    ids = [i for b in batches for i in batch_ids(b)]
    assert sorted(ids) == sorted(c.id for c in cuts if c.id != cuts[1].id)
    assert batches[0]["inputs"].shape[0] == 3 == batches[0]["supervisions"]["num_frames"].shape[0]
    assert f"skipping cut {cuts[1].id}" in caplog.text and "1 cut(s) skipped" in caplog.text


def test_on_the_fly_features_skip_corrupt_audio(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cuts = make_cuts(tmp_path / "wav", "o", [1.5, 2.0, 2.5])
    (tmp_path / "fbank").mkdir()
    cuts.to_file(tmp_path / "fbank" / "tiny_cuts_dev.jsonl.gz")
    sorted((tmp_path / "wav").glob("*.flac"))[2].write_bytes(b"fLaC garbage")
    data = module(tmp_path, "--on-the-fly-feats", "true", "--max-duration", "100")
    caplog.set_level(logging.WARNING)
    batches = list(data.valid_dataloaders(data.valid_cuts()))
    assert sorted(i for b in batches for i in batch_ids(b)) == ["o-000", "o-001"]
    assert batches[0]["inputs"].shape == (2, 200, 80)
    assert "skipping cut o-002" in caplog.text


def test_tiny_corpus_batches(tiny_ci_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prepared ci-size tiny corpus: corpus detected from the folder, BPE filter, batches."""
    import sentencepiece as spm

    monkeypatch.chdir(tiny_ci_dir)
    args = parse_args(["--max-duration", "30", "--num-workers", "0"])
    assert args.corpus == "tiny"
    data = AsrDataModule(args)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_ci_dir / TINY.lang_dir / "bpe.model"))
    train = filter_cuts(data.train_cuts(), sp=sp, name="tiny train")
    batch = next(iter(data.train_dataloaders(train)))
    assert batch["inputs"].shape[0] == len(batch["supervisions"]["text"]) >= 1
    assert batch["inputs"].shape[2] == 80 and torch.isfinite(batch["inputs"]).all()
    assert train.data.stats.kept >= 1
    assert list(data.test_cuts()) == ["dev", "test-clean", "test-other"]
    valid = [i for b in data.valid_dataloaders(data.valid_cuts()) for i in batch_ids(b)]
    assert sorted(valid) == sorted(c.id for c in data.valid_cuts())


def test_batch_without_any_readable_cut_is_skipped(
    corpus_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cuts = list(load_manifest(corpus_dir / "fbank" / "tiny_cuts_dev.jsonl.gz"))
    for cut in cuts[:2]:
        cut.features.storage_path = str(tmp_path / "missing.lca")
    (tmp_path / "fbank").mkdir()
    CutSet.from_cuts(cuts).to_file(tmp_path / "fbank" / "tiny_cuts_dev.jsonl.gz")
    # The first two cuts (1.5 s, 2.0 s) are unreadable and form the first batch.
    data = module(tmp_path, "--max-duration", "5.5", "--num-buckets", "1")
    caplog.set_level(logging.WARNING)
    batches = list(data.valid_dataloaders(data.valid_cuts()))
    ids = sorted(i for b in batches for i in batch_ids(b))
    assert ids == sorted(c.id for c in cuts[2:])
    assert "skipping a batch of 2 cuts" in caplog.text


def test_invalid_cut_in_eval_set_is_dropped(
    corpus_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cuts = list(load_manifest(corpus_dir / "fbank" / "tiny_cuts_dev.jsonl.gz"))
    cuts[0].supervisions[0].duration = cuts[0].duration + 0.5
    (tmp_path / "fbank").mkdir()
    CutSet.from_cuts(cuts).to_file(tmp_path / "fbank" / "tiny_cuts_dev.jsonl.gz")
    data = module(tmp_path, "--max-duration", "100")
    caplog.set_level(logging.WARNING)
    ids = [i for b in data.valid_dataloaders(data.valid_cuts()) for i in batch_ids(b)]
    assert sorted(ids) == sorted(c.id for c in cuts[1:])
    assert f"skipping cut {cuts[0].id}: invalid cut" in caplog.text


def test_audio_samples_input_strategy(corpus_dir: Path) -> None:
    data = module(corpus_dir, "--input-strategy", "AudioSamples", "--max-duration", "100")
    batch = next(iter(data.valid_dataloaders(data.valid_cuts())))
    cuts = batch["supervisions"]["cut"]
    assert batch["inputs"].shape == (len(cuts), max(c.num_samples for c in cuts))
