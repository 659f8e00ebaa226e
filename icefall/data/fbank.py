"""Filter-bank features for training: one configuration, fault-tolerant batch extraction.

The configuration in :func:`fbank_config` is the one sherpa-onnx uses at inference time
(80 mel bins, 16 kHz, dither 0, ``snip_edges=False``, ``high_freq=-400``); inference code
(``icefall.features``) mirrors these numbers with kaldi-native-fbank.

:func:`compute_features` extracts and stores features for a whole :class:`lhotse.CutSet` with
lhotse's ``LilcomChunkyWriter``, optionally in several processes. A cut whose audio cannot be
read (corrupt or empty file) is skipped and counted instead of stopping the job.
"""

from __future__ import annotations

import logging
import multiprocessing
import tempfile
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import List, Optional, Sequence

from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter, load_manifest_lazy
from lhotse.cut import Cut
from tqdm import tqdm

SAMPLING_RATE = 16000
NUM_MEL_BINS = 80
FRAME_SHIFT_S = 0.01
# Fewer cuts than this per job are not worth a worker process.
MIN_CUTS_PER_JOB = 100


def fbank_config() -> FbankConfig:
    """The fbank options used for training features (and mirrored at inference).

    Returns:
      lhotse ``FbankConfig``: 80 mel bins, 16 kHz, 25 ms window, 10 ms shift, dither 0,
      ``snip_edges=False``, ``low_freq=20``, ``high_freq=-400`` (i.e. 7600 Hz at 16 kHz).
      The extractor outputs (num_frames, 80) float32 log-mel energies with
      ``num_frames = round(num_samples / 160)``.
    """
    return FbankConfig(
        sampling_rate=SAMPLING_RATE,
        frame_length=0.025,
        frame_shift=FRAME_SHIFT_S,
        dither=0.0,
        snip_edges=False,
        low_freq=20.0,
        high_freq=-400.0,
        num_filters=NUM_MEL_BINS,
    )


def fbank_extractor() -> Fbank:
    """A lhotse ``Fbank`` extractor built from :func:`fbank_config`."""
    return Fbank(fbank_config())


@dataclass
class ExtractionReport:
    """What happened while extracting features for one set of cuts."""

    num_input: int = 0
    num_done: int = 0
    failures: Counter = field(default_factory=Counter)
    examples: List[str] = field(default_factory=list)

    def merge(self, other: ExtractionReport) -> None:
        self.num_input += other.num_input
        self.num_done += other.num_done
        self.failures.update(other.failures)
        self.examples.extend(other.examples[: max(0, 5 - len(self.examples))])

    def summary(self, name: str) -> str:
        text = f"{name}: features for {self.num_done}/{self.num_input} cuts"
        if self.failures:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.failures.items()))
            text += f"; skipped {sum(self.failures.values())} ({reasons})"
            if self.examples:
                text += "; e.g. " + "; ".join(self.examples)
        return text


class EmptyAudioError(ValueError):
    """The manifest describes a recording without samples."""


def _extract_chunk(
    cuts: Sequence[Cut], storage_path: str, manifest_path: str, desc: str, position: int
) -> ExtractionReport:
    """Extract features for ``cuts``; write them to ``storage_path`` and the cuts to
    ``manifest_path``. Runs in a worker process (or inline when there is one job)."""
    import torch

    torch.set_num_threads(1)
    extractor = fbank_extractor()
    report = ExtractionReport(num_input=len(cuts))
    with (
        LilcomChunkyWriter(storage_path) as storage,
        CutSet.open_writer(manifest_path) as writer,
    ):
        # disable=None: a progress bar on terminals only, not in log files.
        progress = tqdm(cuts, desc=desc, position=position, leave=False, disable=None)
        for cut in progress:
            try:
                if cut.duration <= 0 or cut.num_samples == 0:
                    raise EmptyAudioError("the recording has no samples")
                with_feats = cut.compute_and_store_features(extractor, storage)
            except Exception as error:  # noqa: BLE001 - any bad file is skipped and counted
                empty = isinstance(error, EmptyAudioError)
                report.failures["empty audio" if empty else "unreadable audio"] += 1
                if len(report.examples) < 5:
                    report.examples.append(f"{cut.id}: {type(error).__name__}: {error}"[:200])
                continue
            writer.write(with_feats)
            report.num_done += 1
    return report


def compute_features(
    cuts: CutSet,
    storage_dir: Path,
    output_manifest: Path,
    num_jobs: int = 1,
    desc: str = "fbank",
    executor: Optional[Executor] = None,
) -> ExtractionReport:
    """Compute fbank features for all cuts and write the cut manifest with features attached.

    Features go to ``storage_dir/feats-{job}.lca`` (``LilcomChunkyWriter``); the cuts that got
    features are written, in input order, to ``output_manifest`` (``.jsonl.gz``). The manifest is
    written to a temporary name first and renamed at the end, so an interrupted run leaves no
    half-written manifest behind.

    Args:
      cuts: cuts with recordings (eagerly loaded or lazy; they are materialised).
      storage_dir: folder for the feature archives (created; old archives are overwritten).
      output_manifest: the ``.jsonl.gz`` cut manifest to write.
      num_jobs: number of parallel jobs; small sets use fewer (at least
        ``MIN_CUTS_PER_JOB`` cuts per job), and one job runs in this process.
      desc: progress-bar label.
      executor: a process pool to run the jobs in (see :func:`feature_pool`); one is made for
        this call when it is None and more than one job runs.
    Returns:
      An :class:`ExtractionReport` with the count of skipped cuts per reason.
    """
    cut_list = list(cuts)
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    output_manifest = Path(output_manifest)
    output_manifest.parent.mkdir(parents=True, exist_ok=True)
    num_jobs = max(1, min(num_jobs, len(cut_list) // MIN_CUTS_PER_JOB))
    chunk_size = -(-len(cut_list) // num_jobs)
    chunks = [cut_list[i * chunk_size : (i + 1) * chunk_size] for i in range(num_jobs)]

    report = ExtractionReport()
    with tempfile.TemporaryDirectory(dir=output_manifest.parent) as tmp:
        partial = [str(Path(tmp) / f"cuts-{i}.jsonl.gz") for i in range(num_jobs)]
        storage = [str(storage_dir / f"feats-{i}") for i in range(num_jobs)]
        jobs = [(chunks[i], storage[i], partial[i], f"{desc} job {i}", i) for i in range(num_jobs)]
        if num_jobs == 1:
            reports = [_extract_chunk(*jobs[0])]
        elif executor is not None:
            reports = [f.result() for f in [executor.submit(_extract_chunk, *j) for j in jobs]]
        else:
            with feature_pool(num_jobs) as pool:
                reports = [f.result() for f in [pool.submit(_extract_chunk, *j) for j in jobs]]
        for job_report in reports:
            report.merge(job_report)
        tmp_manifest = Path(tmp) / output_manifest.name
        with CutSet.open_writer(tmp_manifest) as writer:
            for path in partial:
                for cut in load_manifest_lazy(path):
                    writer.write(cut)
        tmp_manifest.replace(output_manifest)
    return report


def feature_pool(num_jobs: int) -> ProcessPoolExecutor:
    """A process pool for :func:`compute_features` (``spawn``: no threads inherited from the
    parent); reuse one for several calls, since every worker imports torch and lhotse once."""
    return ProcessPoolExecutor(num_jobs, mp_context=multiprocessing.get_context("spawn"))


def log_report(report: ExtractionReport, name: str) -> None:
    """Log a report: info when every cut got features, a warning when some were skipped."""
    level = logging.WARNING if report.failures else logging.INFO
    logging.log(level, report.summary(name))


def speed_perturb(cuts: CutSet, factors: Sequence[float] = (0.9, 1.1)) -> CutSet:
    """The cuts followed by one speed-perturbed copy per factor (ids get a ``_sp{factor}``
    suffix), as icefall does for training parts (3x data with the default factors)."""
    result = cuts
    for factor in factors:
        result = result + cuts.perturb_speed(factor)
    return result


def musan_windows(cuts: CutSet, window_s: float = 10.0, min_duration_s: float = 5.0) -> CutSet:
    """Cut noise recordings into ``window_s`` windows and keep windows longer than
    ``min_duration_s`` (icefall keeps > 5 s of 10 s MUSAN windows)."""
    windows = cuts.cut_into_windows(window_s).to_eager()
    return windows.filter(partial(_longer_than, min_duration_s=min_duration_s)).to_eager()


def _longer_than(cut: Cut, min_duration_s: float) -> bool:
    return cut.duration > min_duration_s
