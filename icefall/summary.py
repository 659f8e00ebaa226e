"""Collects a recipe run's results into one summary: WER table, ``summary.json`` and a plot.

The decoding scripts write ``wer-summary-<test set>-*.txt`` files (icefall's format: a header
line ``settings\tWER`` then ``<key>\t<wer>`` rows). Their directory names the method:

* ``exp_dir/<method>/`` (``decode.py``, simulated streaming) -> ``<method>``
* ``exp_dir/streaming/<method>/`` (``streaming_decode.py``) -> ``streaming_<method>``

sherpa-onnx results come from ``exp_dir/deploy.json`` (written by ``benchmarks/deploy.py``):
``sherpa_onnx_greedy_search`` and ``sherpa_onnx_int8_greedy_search``, with the real-time factors
of sherpa-onnx and of our PyTorch streaming decoder measured side by side.

Command line (used by ``egs/tiny/ASR/run.sh``)::

    python icefall/summary.py record-time --file exp/stage_seconds.json --stage train --seconds 812
    python icefall/summary.py summarize --exp-dir exp --test-sets dev test-clean test-other
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

MODE_PREFIXES = {"streaming": "streaming_", "sherpa_onnx": "sherpa_onnx_"}


def read_wer_summary(path: Path) -> float:
    """Returns the WER (percent) of the first result row of an icefall ``wer-summary`` file."""
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2 or lines[0] != ["settings", "WER"]:
        raise ValueError(f"{path} is not a wer-summary file (expected 'settings WER' header)")
    return float(lines[1][1])


def _method_name(exp_dir: Path, summary_file: Path) -> str:
    parts = summary_file.parent.relative_to(exp_dir).parts
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return f"{parts[0]}_{parts[1]}"
    raise ValueError(f"unexpected location of {summary_file} below {exp_dir}")


def collect_wers(exp_dir: Path, test_sets: List[str]) -> Dict[str, Dict[str, float]]:
    """Finds every ``wer-summary`` file below ``exp_dir`` (two levels at most).

    Returns:
      ``wer[test_set][method]`` in percent. When several files exist for the same test set and
      method (other epochs or settings), the most recently written one wins.
    """
    # Longest names first, so that "test-clean-2" is not read as "test-clean".
    names = sorted(test_sets, key=len, reverse=True)
    newest: Dict[tuple, Path] = {}
    for path in list(exp_dir.glob("*/wer-summary-*.txt")) + list(
        exp_dir.glob("*/*/wer-summary-*.txt")
    ):
        rest = path.name[len("wer-summary-") :]
        test_set = next((n for n in names if rest.startswith(n + "-")), None)
        if test_set is None:
            continue
        key = (test_set, _method_name(exp_dir, path))
        if key not in newest or path.stat().st_mtime > newest[key].stat().st_mtime:
            newest[key] = path
    wer: Dict[str, Dict[str, float]] = {name: {} for name in test_sets}
    for (test_set, method), path in sorted(newest.items()):
        wer[test_set][method] = read_wer_summary(path)
    return wer


def count_parameters(checkpoint: Path) -> Optional[int]:
    """Number of model parameters in a ``{"model": state_dict}`` file (integer buffers excluded)."""
    if not checkpoint.is_file():
        return None
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    return sum(t.numel() for t in state_dict.values() if torch.is_floating_point(t))


def record_time(timings_file: Path, stage: str, seconds: float) -> None:
    """Adds (or replaces) one stage's wall time in a JSON file of ``{stage: seconds}``."""
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    timings[stage] = seconds
    timings_file.parent.mkdir(parents=True, exist_ok=True)
    timings_file.write_text(json.dumps(timings, indent=2) + "\n")


def read_loss_curves(tensorboard_dir: Path) -> Dict[str, List[tuple]]:
    """Reads every scalar whose tag mentions "loss" from TensorBoard event files.

    Returns:
      ``{tag: [(batch, value), ...]}``, empty when there are no event files.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: Dict[str, List[tuple]] = {}
    if not tensorboard_dir.is_dir():
        return curves
    accumulator = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    for tag in accumulator.Tags().get("scalars", []):
        if "loss" in tag:
            curves[tag] = [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return curves


def plot_summary(
    curves: Dict[str, List[tuple]], wer: Dict[str, Dict[str, float]], out_file: Path
) -> None:
    """Writes a PNG with the loss curves (left) and WER per method and test set (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, wer_ax) = plt.subplots(1, 2, figsize=(14, 5))
    for tag, points in sorted(curves.items()):
        if points:
            steps, values = zip(*points)
            loss_ax.plot(steps, values, label=tag, marker="o" if "valid" in tag else None)
    loss_ax.set_xlabel("batch")
    loss_ax.set_ylabel("loss per frame")
    loss_ax.set_title("training and validation loss")
    if curves:
        loss_ax.legend(fontsize=8)

    methods = sorted({m for per_set in wer.values() for m in per_set})
    width = 0.8 / max(1, len(wer))
    for i, (test_set, per_method) in enumerate(wer.items()):
        xs = [j + i * width for j in range(len(methods))]
        wer_ax.bar(xs, [per_method.get(m, 0.0) for m in methods], width, label=test_set)
    wer_ax.set_xticks([j + 0.4 - width / 2 for j in range(len(methods))])
    wer_ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    wer_ax.set_ylabel("WER %")
    wer_ax.set_title("WER per method")
    wer_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_file, dpi=100)
    plt.close(fig)


def format_table(summary: dict) -> str:
    """Renders the summary as the plain-text table printed at the end of a run."""
    wer = summary["wer"]
    methods = sorted({m for per_set in wer.values() for m in per_set})
    test_sets = list(wer)
    width = max([len("method")] + [len(m) for m in methods]) + 2
    lines = ["method".ljust(width) + "".join(f"{t:>12}" for t in test_sets) + f"{'RTF':>10}"]
    for method in methods:
        cells = "".join(
            f"{wer[t][method]:>12.2f}" if method in wer[t] else f"{'-':>12}" for t in test_sets
        )
        rtf = summary["rtf"].get(method)
        lines.append(method.ljust(width) + cells + (f"{rtf:>10.4f}" if rtf is not None else ""))
    lines.append(f"parameters: {summary['num_params']}")
    for stage, seconds in summary["stage_seconds"].items():
        lines.append(f"stage {stage}: {seconds:.0f} s")
    return "\n".join(lines)


def read_deploy_report(
    path: Path, test_sets: List[str]
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, float]]:
    """Reads ``benchmarks/deploy.py``'s JSON report.

    Returns:
      ``(wer, rtf)``: ``wer[test_set]`` holds ``sherpa_onnx_greedy_search`` and
      ``sherpa_onnx_int8_greedy_search`` (percent); ``rtf`` holds ``sherpa_onnx_greedy_search``
      and ``streaming_greedy_search`` (our PyTorch streaming decoder on the same audio).
    """
    report = json.loads(path.read_text())
    wer: Dict[str, Dict[str, float]] = {}
    for cuts_name, result in report["test_sets"].items():
        test_set = next((t for t in test_sets if cuts_name.endswith("_cuts_" + t)), cuts_name)
        wer[test_set] = {
            "sherpa_onnx_greedy_search": result["sherpa_onnx"]["wer"],
            "sherpa_onnx_int8_greedy_search": result["sherpa_onnx_int8"]["wer"],
        }
    rtf = {
        "sherpa_onnx_greedy_search": report["rtf_sherpa_onnx"],
        "streaming_greedy_search": report["rtf_pytorch"],
    }
    return wer, rtf


def summarize(exp_dir: Path, test_sets: List[str]) -> dict:
    """Builds ``summary.json`` and ``summary.png`` in ``exp_dir`` and returns the summary dict.

    Keys: ``wer[test_set][method]`` (percent), ``rtf[method]`` (from ``deploy.json`` when
    present), ``num_params``, ``stage_seconds[stage]``.
    """
    wer = collect_wers(exp_dir, test_sets)
    rtf: Dict[str, float] = {}
    if (exp_dir / "deploy.json").is_file():
        deploy_wer, rtf = read_deploy_report(exp_dir / "deploy.json", test_sets)
        for test_set, per_method in deploy_wer.items():
            wer.setdefault(test_set, {}).update(per_method)
    timings_file = exp_dir / "stage_seconds.json"
    summary = {
        "wer": wer,
        "rtf": rtf,
        "num_params": count_parameters(exp_dir / "pretrained.pt"),
        "stage_seconds": json.loads(timings_file.read_text()) if timings_file.is_file() else {},
    }
    (exp_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_summary(read_loss_curves(exp_dir / "tensorboard"), summary["wer"], exp_dir / "summary.png")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("record-time", help="record one stage's wall time")
    timing.add_argument("--file", type=Path, required=True)
    timing.add_argument("--stage", required=True)
    timing.add_argument("--seconds", type=float, required=True)
    report = commands.add_parser("summarize", help="write summary.json/.png and print the table")
    report.add_argument("--exp-dir", type=Path, required=True)
    report.add_argument("--test-sets", nargs="+", default=["dev", "test-clean", "test-other"])
    args = parser.parse_args()
    if args.command == "record-time":
        record_time(args.file, args.stage, args.seconds)
    else:
        print(format_table(summarize(args.exp_dir, args.test_sets)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
