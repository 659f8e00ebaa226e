"""Lazy filtering of unusable cuts, with counted warnings instead of crashes.

:func:`filter_cuts` wraps a (lazy) CutSet so that, while it is iterated, cuts are dropped when:

- ``too short`` / ``too long``: duration outside ``[min_duration, max_duration]`` seconds
  (this includes empty audio, whose duration is 0);
- ``empty text``: no supervision or only blank text;
- ``invalid cut``: inconsistent manifest or a supervision outside the cut (lhotse's ASR dataset
  would stop the epoch with an assertion);
- ``more tokens than frames``: the BPE tokens outnumber the encoder frames after subsampling
  (the pruned RNN-T loss needs ``T' >= S``);
- ``missing audio``: with ``check_audio=True`` (on-the-fly features), a source file that does not
  exist or is empty.

Each reason gets a warning for its first few cuts and the totals are logged when an iteration
(an epoch) ends. Audio that exists but cannot be decoded, and features that cannot be read, are
caught later by the data module's fault-tolerant input strategies (see ``datamodule.py``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Protocol

from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.lazy import LazyIteratorChain
from lhotse.qa import validate_cut
from lhotse.utils import compute_num_frames

FRAME_SHIFT_S = 0.01
WARNINGS_PER_REASON = 3
SUPERVISION_TOLERANCE_S = 1e-3


class TokenEncoder(Protocol):
    """What the token/frame check needs from a sentencepiece processor."""

    def encode(self, text: str) -> List[int]: ...


def encoder_frames(num_frames: int) -> int:
    """Frames after the Zipformer's convolutional subsampling (factor 4):
    ``T' = ((T - 7) // 2 + 1) // 2``."""
    return ((num_frames - 7) // 2 + 1) // 2


@dataclass
class FilterStats:
    """Counts of kept and removed cuts (per reason) for the current iteration."""

    kept: int = 0
    removed: Counter = field(default_factory=Counter)

    def reset(self) -> None:
        self.kept = 0
        self.removed = Counter()

    @property
    def num_removed(self) -> int:
        return sum(self.removed.values())

    def summary(self, name: str) -> str:
        total = self.kept + self.num_removed
        text = f"{name}: kept {self.kept}/{total} cuts"
        if self.removed:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.removed.items()))
            text += f", removed {self.num_removed} ({reasons})"
        return text


@dataclass
class CutChecker:
    """Decides whether a cut is usable for transducer training.

    Attributes:
      min_duration, max_duration: allowed duration range in seconds.
      sp: a sentencepiece processor; without it the token/frame check is skipped.
      subsampling: maps input frames (10 ms) to encoder frames.
      check_audio: also require every audio source file to exist and be non-empty.
    """

    min_duration: float = 1.0
    max_duration: float = 20.0
    sp: Optional[TokenEncoder] = None
    subsampling: Callable[[int], int] = encoder_frames
    check_audio: bool = False

    def reason(self, cut: Cut) -> Optional[str]:
        """Why ``cut`` is unusable, or None when it is fine."""
        if cut.duration < self.min_duration:
            return "too short"
        if cut.duration > self.max_duration:
            return "too long"
        text = " ".join((s.text or "").strip() for s in cut.supervisions).strip()
        if not text:
            return "empty text"
        if not is_consistent_cut(cut):
            return "invalid cut"
        if self.check_audio and not _audio_files_present(cut):
            return "missing audio"
        if self.sp is not None:
            num_tokens = len(self.sp.encode(text))
            if self.subsampling(_num_frames(cut)) < num_tokens:
                return "more tokens than frames"
        return None


def is_consistent_cut(cut: Cut) -> bool:
    """The checks ``K2SpeechRecognitionDataset`` asserts on every batch: lhotse's manifest
    validation and supervisions inside the cut (1 ms tolerance)."""
    try:
        validate_cut(cut)
    except AssertionError:
        return False
    return all(
        s.start >= -SUPERVISION_TOLERANCE_S and s.end <= cut.duration + SUPERVISION_TOLERANCE_S
        for s in cut.supervisions
    )


def _num_frames(cut: Cut) -> int:
    if cut.has_features and cut.num_frames is not None:
        return cut.num_frames
    return compute_num_frames(cut.duration, FRAME_SHIFT_S, cut.sampling_rate)


def _audio_files_present(cut: Cut) -> bool:
    recording = getattr(cut, "recording", None)
    if recording is None:
        return cut.has_recording
    for source in recording.sources:
        if source.type == "file":
            path = Path(source.source)
            if not path.is_file() or path.stat().st_size == 0:
                return False
    return True


class LazyCountingFilter:
    """A lazy iterable over the usable cuts of ``source`` that counts what it removes.

    Statistics restart at every iteration and are logged when the iteration finishes (the same
    totals as the previous iteration's are not logged again: samplers read a set several times,
    e.g. to estimate bucket sizes).
    """

    def __init__(self, source: CutSet, checker: CutChecker, name: str = "cuts") -> None:
        self.source = source
        self.checker = checker
        self.name = name
        self.stats = FilterStats()
        self._last_summary = ""

    def __iter__(self) -> Iterator[Cut]:
        self.stats.reset()
        for cut in self.source:
            reason = self.checker.reason(cut)
            if reason is None:
                self.stats.kept += 1
                yield cut
                continue
            self.stats.removed[reason] += 1
            count = self.stats.removed[reason]
            if count <= WARNINGS_PER_REASON:
                more = " (more of these are only counted)" if count == WARNINGS_PER_REASON else ""
                logging.warning(
                    f"{self.name}: removing cut {cut.id} ({cut.duration:.2f} s): {reason}{more}"
                )
        summary = self.stats.summary(self.name)
        if summary != self._last_summary:
            level = logging.WARNING if self.stats.num_removed else logging.INFO
            logging.log(level, summary)
            self._last_summary = summary

    def __add__(self, other) -> LazyIteratorChain:
        return LazyIteratorChain(self, other)

    def __len__(self) -> int:
        raise TypeError("a lazily filtered CutSet has no length; use .to_eager() first")


def filter_cuts(
    cuts: CutSet,
    sp: Optional[TokenEncoder] = None,
    min_duration: float = 1.0,
    max_duration: float = 20.0,
    subsampling: Callable[[int], int] = encoder_frames,
    check_audio: bool = False,
    name: str = "cuts",
) -> CutSet:
    """A lazy CutSet without the unusable cuts of ``cuts`` (see the module docstring).

    Args:
      cuts: input cuts (lazy or eager); nothing is read until the result is iterated.
      sp: sentencepiece processor for the token/frame check (None skips it).
      min_duration, max_duration: allowed duration range in seconds.
      subsampling: input frames -> encoder frames (default: the Zipformer's ``T'``).
      check_audio: drop cuts whose audio file is missing or empty (for on-the-fly features).
      name: label used in the log lines.
    Returns:
      A lazy CutSet; its ``.data.stats`` (:class:`FilterStats`) hold the counts of the last
      iteration.
    """
    checker = CutChecker(
        min_duration=min_duration,
        max_duration=max_duration,
        sp=sp,
        subsampling=subsampling,
        check_audio=check_audio,
    )
    return CutSet(LazyCountingFilter(cuts, checker, name=name))
