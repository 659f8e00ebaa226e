"""Validation of cut manifests before training.

Checks each cut (lhotse's own checks plus ASR-specific ones) and collects every problem instead
of stopping at the first one, so a manifest with a few bad cuts gives a readable report:

- ``no features``: the cut has no precomputed features;
- ``supervision outside cut``: a supervision starts before 0 or ends after the cut;
- ``empty text``: a supervision has no (or only blank) text;
- ``no supervision``: the cut has nothing to train on;
- ``lhotse check failed``: ``lhotse.qa.validate_cut`` raised (inconsistent durations, frames...);
- ``unreadable features``: with ``read_data=True``, the feature matrix could not be loaded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, List

from lhotse.cut import Cut
from lhotse.qa import validate_cut

# Supervisions may overshoot the cut end by float rounding (speed perturbation rounds samples).
TOLERANCE_S = 0.025


@dataclass
class ValidationReport:
    """Problems found in one manifest: counts per reason and a few example messages."""

    name: str
    num_cuts: int = 0
    problems: Counter = field(default_factory=Counter)
    examples: List[str] = field(default_factory=list)
    max_examples: int = 10

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, reason: str, message: str) -> None:
        self.problems[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{reason}: {message}")

    def format(self) -> str:
        if self.ok:
            return f"{self.name}: OK ({self.num_cuts} cuts)"
        lines = [f"{self.name}: {sum(self.problems.values())} problem(s) in {self.num_cuts} cuts"]
        lines += [f"  {reason}: {n}" for reason, n in sorted(self.problems.items())]
        lines += [f"  e.g. {example}" for example in self.examples]
        return "\n".join(lines)


def cut_problems(cut: Cut, read_data: bool = False) -> List[tuple[str, str]]:
    """All problems of one cut as ``(reason, message)`` pairs (empty when it is fine)."""
    problems = []
    if not cut.has_features:
        problems.append(("no features", f"cut {cut.id} has no features"))
    if not cut.supervisions:
        problems.append(("no supervision", f"cut {cut.id} has no supervision"))
    for sup in cut.supervisions:
        if sup.start < -TOLERANCE_S or sup.end > cut.duration + TOLERANCE_S:
            problems.append(
                (
                    "supervision outside cut",
                    f"cut {cut.id} ({cut.duration:.3f} s): supervision {sup.id} spans "
                    f"{sup.start:.3f}-{sup.end:.3f} s",
                )
            )
        if sup.text is None or not sup.text.strip():
            problems.append(("empty text", f"cut {cut.id}: supervision {sup.id} has no text"))
    try:
        validate_cut(cut)
    except AssertionError as error:
        problems.append(("lhotse check failed", f"cut {cut.id}: {error}"))
    if read_data and cut.has_features:
        try:
            cut.load_features()
        except Exception as error:  # noqa: BLE001 - any read error is a finding, not a crash
            problems.append(("unreadable features", f"cut {cut.id}: {error}"))
    return problems


def validate_cuts(
    cuts: Iterable[Cut], name: str = "cuts", read_data: bool = False
) -> ValidationReport:
    """Validate every cut and return a report (never raises for bad cuts).

    Args:
      cuts: a CutSet (lazy is fine) or any iterable of cuts.
      name: shown in the report (e.g. the manifest file name).
      read_data: also load every feature matrix (slow for big manifests).
    """
    report = ValidationReport(name=name)
    ids = Counter()
    for cut in cuts:
        report.num_cuts += 1
        ids[cut.id] += 1
        if ids[cut.id] == 2:
            report.add("duplicate id", f"cut id {cut.id} appears more than once")
        for reason, message in cut_problems(cut, read_data=read_data):
            report.add(reason, message)
    if report.num_cuts == 0:
        report.add("empty manifest", f"{name} has no cuts")
    return report
