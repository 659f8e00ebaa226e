"""The lhotse data module shared by every recipe and corpus.

Usage in a recipe (icefall style)::

    parser = argparse.ArgumentParser()
    AsrDataModule.add_arguments(parser)
    args = parser.parse_args()
    data = AsrDataModule(args)
    train_cuts = filter_cuts(data.train_cuts(), sp=sp)
    train_dl = data.train_dataloaders(train_cuts, sampler_state_dict=saved.get("sampler"))
    valid_dl = data.valid_dataloaders(data.valid_cuts())
    for name, cuts in data.test_cuts().items():
        test_dl = data.test_dataloaders(cuts)

Batches come from lhotse's ``K2SpeechRecognitionDataset``: ``batch["inputs"]`` is (N, T, 80)
fbank padded with ``LOG_EPS``, ``batch["supervisions"]`` holds ``text``, ``start_frame``,
``num_frames`` (and ``cut`` with ``--return-cuts``).

Which cut files are train/valid/test is the corpus's business (``icefall.data.corpora``), chosen
with ``--corpus`` (default: detected from the ``egs/<corpus>/ASR`` folder we run in).

Resuming: ``train_dl.sampler.state_dict()`` describes the batches the training loop has
*received* (not the ones the loader's workers prefetched), so a run restored with
``train_dataloaders(cuts, sampler_state_dict=...)`` continues with exactly the next batch.

Robustness: a cut whose features cannot be read (or whose audio cannot be decoded, with
``--on-the-fly-feats``) is dropped from its batch and counted with a warning instead of
stopping the epoch; a batch in which no cut can be read is skipped with a warning. Cuts that
are too short/long, have empty text or more tokens than encoder frames are removed earlier by
:func:`icefall.data.filters.filter_cuts`.
"""

from __future__ import annotations

import argparse
import copy
import logging
from collections import OrderedDict
from itertools import islice
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from lhotse import CutSet, Fbank, load_manifest, load_manifest_lazy
from lhotse.dataset import (
    CutConcatenate,
    CutMix,
    DynamicBucketingSampler,
    K2SpeechRecognitionDataset,
    SimpleCutSampler,
    SpecAugment,
)
from lhotse.dataset.collation import collate_matrices, read_audio_from_cuts
from lhotse.dataset.input_strategies import AudioSamples, OnTheFlyFeatures, PrecomputedFeatures
from lhotse.dataset.sampling.base import CutSampler, EpochDiagnostics
from lhotse.utils import LOG_EPSILON
from torch.utils.data import DataLoader

from icefall.data.corpora import CORPORA, Corpus, detect_corpus, get_corpus
from icefall.data.fbank import fbank_config
from icefall.data.filters import is_consistent_cut
from icefall.utils import str2bool

WARNINGS_PER_WORKER = 5
NUM_CUTS_FOR_BINS_ESTIMATE = 10000


class _ConsumedBatchTracking:
    """Mixin for lhotse samplers: remember the sampling statistics after every batch so that
    ``state_dict()`` can describe the batches consumed by the training loop.

    ``DataLoader`` workers prefetch batches, so the sampler runs ahead of the training loop;
    lhotse's own ``state_dict()`` would make a resumed run skip the prefetched batches.
    :class:`ResumableDataLoader` reports the consumed count in ``consumed_batches``.
    """

    def _reset_tracking(self) -> None:
        self.consumed_batches: Optional[int] = None
        self._yielded = 0
        epoch = self.diagnostics.current_epoch
        self._snapshots: Dict[int, Dict[str, int]] = {0: EpochDiagnostics(epoch).state_dict()}

    def __iter__(self):
        if not self._just_restored_state:
            self._reset_tracking()
        return super().__iter__()

    def __next__(self):
        batch = super().__next__()
        self._yielded += 1
        self._snapshots[self._yielded] = self.diagnostics.current_epoch_stats.state_dict()
        return batch

    def mark_consumed(self, num_batches: int) -> None:
        """The training loop has received ``num_batches`` batches of the current epoch."""
        self.consumed_batches = num_batches
        for key in [k for k in self._snapshots if k < num_batches]:
            del self._snapshots[key]

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        epoch = self.diagnostics.current_epoch
        snapshot = self._snapshots.get(self.consumed_batches)
        if snapshot is not None and snapshot["epoch"] == epoch:
            state["diagnostics"]["stats_per_epoch"][epoch] = dict(snapshot)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._yielded = self.diagnostics.current_epoch_stats.total_batches
        self._snapshots = {self._yielded: self.diagnostics.current_epoch_stats.state_dict()}
        self.consumed_batches = self._yielded

    @property
    def resume_position(self) -> int:
        """Batches of the current epoch already consumed before the next ``iter()``."""
        return self._yielded if self._just_restored_state else 0


class ResumableBucketingSampler(_ConsumedBatchTracking, DynamicBucketingSampler):
    """``DynamicBucketingSampler`` whose state counts consumed (not prefetched) batches."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._reset_tracking()


class ResumableSimpleSampler(_ConsumedBatchTracking, SimpleCutSampler):
    """``SimpleCutSampler`` whose state counts consumed (not prefetched) batches."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._reset_tracking()


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that skips empty batches (None: every cut of the batch failed to load)
    and tells a resumable sampler how many batches the consumer has received."""

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        sampler = self.sampler
        tracking = isinstance(sampler, _ConsumedBatchTracking)
        start = sampler.resume_position if tracking else 0
        for index, batch in enumerate(super().__iter__(), start=start + 1):
            if tracking:
                sampler.mark_consumed(index)
            if batch is not None:
                yield batch


class EmptyBatchError(RuntimeError):
    """No cut of a batch could be loaded."""


class RobustAsrDataset(K2SpeechRecognitionDataset):
    """``K2SpeechRecognitionDataset`` that returns None (a skipped batch) instead of failing
    when no cut of a batch can be loaded; single bad cuts are dropped by the input strategies."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.invalid = _FailureCounter("invalid cut")

    def __getitem__(self, cuts: CutSet) -> Optional[Dict[str, Any]]:
        try:
            return super().__getitem__(self._consistent(cuts))
        except EmptyBatchError as error:
            logging.warning(f"skipping a batch of {len(cuts)} cuts: {error}")
            return None

    def _consistent(self, cuts: CutSet) -> CutSet:
        """The cuts lhotse's ASR checks accept (the others would fail the whole batch)."""
        if all(is_consistent_cut(cut) for cut in cuts):
            return cuts
        kept = []
        for cut in cuts:
            if is_consistent_cut(cut):
                kept.append(cut)
            else:
                self.invalid.record(
                    cut.id, ValueError("supervision outside the cut or bad manifest")
                )
        if not kept:
            raise EmptyBatchError("no cut passed lhotse's ASR checks")
        return CutSet.from_cuts(kept)


class _FailureCounter:
    """Counts cuts dropped by an input strategy (per worker process) and warns about them."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0

    def record(self, cut_id: str, error: Exception) -> None:
        self.count += 1
        if self.count <= WARNINGS_PER_WORKER or self.count % 100 == 0:
            # lhotse appends the whole cut to error messages: keep the first line only.
            message = str(error).split("\n", 1)[0][:200]
            logging.warning(
                f"skipping cut {cut_id}: {self.what} ({type(error).__name__}: {message}); "
                f"{self.count} cut(s) skipped so far in this worker"
            )


class RobustPrecomputedFeatures(PrecomputedFeatures):
    """``PrecomputedFeatures`` that drops cuts whose features cannot be read or are not finite.

    Returns ``(features, feature_lens, cuts)``: features (B, T, F) padded with ``LOG_EPSILON``,
    feature_lens (B,) int32, and the cuts that made it into the batch.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures = _FailureCounter("unreadable features")

    def __call__(
        self, cuts: CutSet, pad_direction: Optional[str] = "right"
    ) -> Tuple[torch.Tensor, torch.Tensor, CutSet]:
        matrices, kept = [], []
        for cut in cuts:
            try:
                feats = cut.load_features()
                if not np.isfinite(feats).all():
                    raise ValueError("features contain NaN or inf")
            except Exception as error:  # noqa: BLE001 - a bad file must not stop the epoch
                self.failures.record(cut.id, error)
                continue
            matrices.append(torch.from_numpy(_fit_frames(feats, cut.num_frames)))
            kept.append(cut)
        if not kept:
            raise EmptyBatchError(
                f"no features could be read (e.g. cut {cuts[0].id}); check the feature files "
                "with python -m icefall.data.validate_manifest --read-data"
            )
        features = collate_matrices(matrices, padding_value=LOG_EPSILON)
        lens = torch.tensor([cut.num_frames for cut in kept], dtype=torch.int32)
        return features, lens, CutSet.from_cuts(kept)


def _fit_frames(feats: np.ndarray, num_frames: int) -> np.ndarray:
    """Trim or pad (with LOG_EPSILON) a (T, F) matrix to ``num_frames`` rows."""
    if feats.shape[0] >= num_frames:
        return feats[:num_frames]
    pad = np.full((num_frames - feats.shape[0], feats.shape[1]), LOG_EPSILON, feats.dtype)
    return np.concatenate([feats, pad])


class RobustOnTheFlyFeatures(OnTheFlyFeatures):
    """``OnTheFlyFeatures`` that drops (and counts) cuts whose audio cannot be read.

    Returns ``(features, feature_lens, cuts)``: features (B, T, F) padded with ``LOG_EPSILON``,
    feature_lens (B,) int64, and the cuts that made it into the batch.
    """

    def __init__(self, extractor: Fbank) -> None:
        super().__init__(extractor, fault_tolerant=True)
        self.failures = _FailureCounter("unreadable audio")

    def __call__(self, cuts: CutSet, *args, **kwargs) -> Tuple[torch.Tensor, torch.Tensor, CutSet]:
        audios, kept = read_audio_from_cuts(cuts, suppress_errors=True)
        kept_ids = {cut.id for cut in kept}
        for cut in cuts:
            if cut.id not in kept_ids:
                self.failures.record(cut.id, RuntimeError("audio could not be loaded"))
        if not audios:
            raise EmptyBatchError(f"no audio could be read (e.g. cut {cuts[0].id})")
        features = [
            torch.from_numpy(self.extractor.extract(audio.numpy(), cut.sampling_rate))
            for audio, cut in zip(audios, kept)
        ]
        lens = torch.tensor([f.shape[0] for f in features], dtype=torch.int64)
        return collate_matrices(features, padding_value=LOG_EPSILON), lens, kept


class _SeedWorkers:
    """Gives every DataLoader worker its own deterministic seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        seed = self.seed + worker_id
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)


def _usable_num_buckets(cuts: CutSet, requested: int, max_duration: float) -> int:
    """``requested``, lowered for small cut sets (e.g. the tiny corpus at ``ci`` size).

    lhotse estimates the bucket bins from the first 10000 cuts and needs at least one cut per
    bucket; and a bucket holding less than ``max_duration`` seconds yields only a partial batch,
    which ``--drop-last`` drops. So at most one bucket per cut and per ``max_duration`` seconds
    of those cuts.
    """
    durations = [cut.duration for cut in islice(cuts, NUM_CUTS_FOR_BINS_ESTIMATE)]
    usable = min(requested, len(durations), int(sum(durations) // max_duration))
    if usable < requested:
        what = f"{usable} buckets" if usable > 1 else "no bucketing (SimpleCutSampler)"
        logging.info(
            f"{len(durations)} cuts ({sum(durations):.0f} s) are too few for {requested} buckets "
            f"at --max-duration {max_duration:g}: using {what}"
        )
    return usable


class AsrDataModule:
    """Train/valid/test cuts and dataloaders of an ASR corpus (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.corpus: Corpus = get_corpus(args.corpus)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the data flags icefall users know (same names and defaults)."""
        group = parser.add_argument_group(
            title="ASR data related options",
            description="These options are used to prepare the PyTorch DataLoaders from lhotse "
            "CutSets (corpus, dynamic batch size, augmentation, ...).",
        )
        group.add_argument(
            "--corpus",
            type=str,
            default=detect_corpus(),
            choices=sorted(CORPORA),
            help="Which corpus's cut files to use (default: from the egs/<corpus>/ASR folder).",
        )
        group.add_argument(
            "--full-libri",
            type=str2bool,
            default=True,
            help="LibriSpeech: train on all 960 h (train-all-shuf) instead of train-clean-100.",
        )
        group.add_argument(
            "--mini-libri",
            type=str2bool,
            default=False,
            help="LibriSpeech: train on train-clean-5 and validate on dev-clean-2.",
        )
        group.add_argument(
            "--manifest-dir",
            type=Path,
            default=Path("data/fbank"),
            help="Folder with the {corpus}_cuts_{part}.jsonl.gz cut manifests.",
        )
        group.add_argument(
            "--max-duration",
            type=float,
            default=200.0,
            help="Maximum seconds of audio in a batch (lower it on CUDA OOM).",
        )
        group.add_argument(
            "--bucketing-sampler",
            type=str2bool,
            default=True,
            help="Use DynamicBucketingSampler (batches of similar-length cuts).",
        )
        group.add_argument(
            "--num-buckets",
            type=int,
            default=30,
            help="Number of duration buckets of the bucketing sampler.",
        )
        group.add_argument(
            "--concatenate-cuts",
            type=str2bool,
            default=False,
            help="Concatenate utterances to fill a batch (less padding).",
        )
        group.add_argument(
            "--duration-factor",
            type=float,
            default=1.0,
            help="With --concatenate-cuts: max concatenated length relative to the longest cut.",
        )
        group.add_argument(
            "--gap",
            type=float,
            default=1.0,
            help="With --concatenate-cuts: seconds of padding between concatenated cuts.",
        )
        group.add_argument(
            "--on-the-fly-feats",
            type=str2bool,
            default=False,
            help="Compute fbank from audio while training instead of reading stored features.",
        )
        group.add_argument(
            "--shuffle",
            type=str2bool,
            default=True,
            help="Shuffle the training cuts every epoch.",
        )
        group.add_argument(
            "--drop-last",
            type=str2bool,
            default=True,
            help="Drop the last, incomplete training batch.",
        )
        group.add_argument(
            "--return-cuts",
            type=str2bool,
            default=True,
            help="Put the cuts in batch['supervisions']['cut'].",
        )
        group.add_argument(
            "--num-workers",
            type=int,
            default=2,
            help="DataLoader worker processes.",
        )
        group.add_argument(
            "--enable-spec-aug",
            type=str2bool,
            default=True,
            help="Apply SpecAugment to training batches.",
        )
        group.add_argument(
            "--spec-aug-time-warp-factor",
            type=int,
            default=80,
            help="SpecAugment time warp factor (values < 1 disable time warping).",
        )
        group.add_argument(
            "--enable-musan",
            type=str2bool,
            default=True,
            help="Mix training cuts with noise (musan_cuts.jsonl.gz), SNR 10-20 dB, p=0.5.",
        )
        group.add_argument(
            "--input-strategy",
            type=str,
            default="PrecomputedFeatures",
            choices=["PrecomputedFeatures", "AudioSamples"],
            help="How batches are built from cuts: stored features or raw audio samples.",
        )

    # ------------------------------------------------------------------ cut sets
    def _load_parts(self, parts: Tuple[str, ...], what: str) -> CutSet:
        sets = [self._load_part(part, what) for part in parts]
        cuts = sets[0]
        for more in sets[1:]:
            cuts = cuts + more
        return cuts

    def _load_part(self, part: str, what: str) -> CutSet:
        path = Path(self.args.manifest_dir) / self.corpus.cuts_filename(part)
        if not path.is_file():
            raise FileNotFoundError(
                f"{what} cuts {path} not found: run egs/{self.corpus.name}/ASR/prepare.sh "
                f"(fbank stage) first, or pass --manifest-dir/--corpus"
            )
        logging.info(f"About to get {what} cuts from {path}")
        return load_manifest_lazy(path)

    def train_cuts(self) -> CutSet:
        """The training cuts (lazy), e.g. LibriSpeech's train-all-shuf with --full-libri."""
        parts = self.corpus.train_parts(self.args.full_libri, self.args.mini_libri)
        return self._load_parts(parts, "train")

    def valid_cuts(self) -> CutSet:
        """The validation cuts (lazy), e.g. dev-clean + dev-other."""
        return self._load_parts(self.corpus.valid_parts(self.args.mini_libri), "valid")

    def test_cuts(self) -> Dict[str, CutSet]:
        """Test sets by name, in the corpus's order (e.g. test-clean, test-other)."""
        return OrderedDict((part, self._load_part(part, "test")) for part in self.corpus.test)

    # ------------------------------------------------------------------ dataloaders
    def _input_strategy(self):
        if self.args.on_the_fly_feats:
            return RobustOnTheFlyFeatures(Fbank(fbank_config()))
        if self.args.input_strategy == "AudioSamples":
            return AudioSamples(fault_tolerant=True)
        return RobustPrecomputedFeatures()

    def _noise_transform(self) -> List[CutMix]:
        if not self.args.enable_musan:
            return []
        path = Path(self.args.manifest_dir) / self.corpus.noise_cuts
        if not path.is_file():
            logging.warning(f"--enable-musan: {path} not found; training without noise mixing")
            return []
        logging.info(f"Enable noise mixing with {path} (SNR 10-20 dB, p=0.5)")
        return [CutMix(cuts=load_manifest(path), p=0.5, snr=(10, 20), preserve_id=True)]

    def _concatenation(self) -> List[CutConcatenate]:
        if not self.args.concatenate_cuts:
            return []
        return [CutConcatenate(duration_factor=self.args.duration_factor, gap=self.args.gap)]

    def _spec_augment(self) -> List[SpecAugment]:
        if not self.args.enable_spec_aug:
            return []
        return [
            SpecAugment(
                time_warp_factor=self.args.spec_aug_time_warp_factor,
                num_frame_masks=10,
                features_mask_size=27,
                num_feature_masks=2,
                frames_mask_size=100,
            )
        ]

    def train_dataloaders(
        self, cuts_train: CutSet, sampler_state_dict: Optional[Dict[str, Any]] = None
    ) -> DataLoader:
        """The training DataLoader.

        Args:
          cuts_train: training cuts (typically ``filter_cuts(self.train_cuts(), sp=sp)``).
          sampler_state_dict: ``train_dl.sampler.state_dict()`` saved by an earlier run; the
            loader then continues with the batch after the last one that run received.
        """
        args = self.args
        dataset = RobustAsrDataset(
            cut_transforms=self._concatenation() + self._noise_transform(),
            input_transforms=self._spec_augment(),
            input_strategy=self._input_strategy(),
            return_cuts=args.return_cuts,
        )
        num_buckets = _usable_num_buckets(cuts_train, args.num_buckets, args.max_duration)
        if args.bucketing_sampler and num_buckets > 1:
            sampler: CutSampler = ResumableBucketingSampler(
                cuts_train,
                max_duration=args.max_duration,
                shuffle=args.shuffle,
                num_buckets=num_buckets,
                buffer_size=num_buckets * 5000,
                drop_last=args.drop_last,
            )
        else:
            sampler = ResumableSimpleSampler(
                cuts_train,
                max_duration=args.max_duration,
                shuffle=args.shuffle,
                drop_last=args.drop_last,
            )
        if sampler_state_dict is not None:
            logging.info("Loading sampler state dict")
            sampler.load_state_dict(copy.deepcopy(sampler_state_dict))
        seed = int(torch.randint(0, 100000, ()).item())
        return ResumableDataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=args.num_workers,
            persistent_workers=False,
            worker_init_fn=_SeedWorkers(seed),
        )

    def _eval_dataloader(self, cuts: CutSet) -> DataLoader:
        dataset = RobustAsrDataset(
            cut_transforms=self._concatenation(),
            input_strategy=self._input_strategy(),
            return_cuts=self.args.return_cuts,
        )
        num_buckets = _usable_num_buckets(cuts, self.args.num_buckets, self.args.max_duration)
        if num_buckets > 1:
            sampler: CutSampler = DynamicBucketingSampler(
                cuts, max_duration=self.args.max_duration, shuffle=False, num_buckets=num_buckets
            )
        else:
            sampler = SimpleCutSampler(cuts, max_duration=self.args.max_duration, shuffle=False)
        return ResumableDataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.args.num_workers,
            persistent_workers=False,
        )

    def valid_dataloaders(self, cuts_valid: CutSet) -> DataLoader:
        """The validation DataLoader (no augmentation, no shuffling)."""
        return self._eval_dataloader(cuts_valid)

    def test_dataloaders(self, cuts: CutSet) -> DataLoader:
        """A test DataLoader (no augmentation, no shuffling; cuts returned for decoding)."""
        return self._eval_dataloader(cuts)
