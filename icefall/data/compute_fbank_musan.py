#!/usr/bin/env python3
"""Compute fbank features for MUSAN-style noise, used for noise mixing (CutMix) in training.

Usage (from ``egs/<corpus>/ASR``)::

    python -m icefall.data.compute_fbank_musan --manifest-dir data/manifests \\
        --output-dir data/fbank

Reads whichever of ``musan_recordings_{music,speech,noise}.jsonl.gz`` exist (lhotse's MUSAN
manifests, or a locally generated noise set under the same names), cuts the recordings into
10 s windows, keeps windows longer than ``--min-duration`` seconds (5 by default) and writes
``musan_cuts.jsonl.gz`` with features under ``musan_feats/``. Skipped if the output exists.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from lhotse import CutSet, RecordingSet, load_manifest

from icefall.data.fbank import compute_features, log_report, musan_windows

MUSAN_PARTS = ("music", "speech", "noise")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--output-dir", type=Path, default=Path("data/fbank"))
    parser.add_argument("--window", type=float, default=10.0, help="window length in seconds")
    parser.add_argument(
        "--min-duration",
        type=float,
        default=5.0,
        help="keep windows longer than this (seconds); lower it for short noise sets",
    )
    parser.add_argument("--num-jobs", type=int, default=1, help="feature extraction processes")
    return parser


def load_noise_recordings(manifest_dir: Path) -> Optional[RecordingSet]:
    """All MUSAN parts present in ``manifest_dir`` as one RecordingSet (None if none)."""
    found = []
    for part in MUSAN_PARTS:
        path = manifest_dir / f"musan_recordings_{part}.jsonl.gz"
        if path.is_file():
            found.append(load_manifest(path))
            logging.info(f"using {path} ({len(found[-1])} recordings)")
    if not found:
        return None
    recordings = found[0]
    for more in found[1:]:
        recordings = recordings + more
    return recordings.to_eager()


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    output = args.output_dir / "musan_cuts.jsonl.gz"
    if output.is_file():
        logging.info(f"{output} exists; skipping")
        return
    recordings = load_noise_recordings(args.manifest_dir)
    if recordings is None:
        raise SystemExit(
            f"no musan_recordings_{{{','.join(MUSAN_PARTS)}}}.jsonl.gz in {args.manifest_dir}"
        )
    windows = musan_windows(
        CutSet.from_manifests(recordings=recordings), args.window, args.min_duration
    )
    if len(windows) == 0:
        raise SystemExit(
            f"no noise window is longer than {args.min_duration} s; lower --min-duration"
        )
    logging.info(f"computing fbank for {len(windows)} noise windows")
    report = compute_features(
        windows, args.output_dir / "musan_feats", output, num_jobs=args.num_jobs, desc="musan"
    )
    log_report(report, "musan")


if __name__ == "__main__":
    main()
