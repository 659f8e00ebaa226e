#!/usr/bin/env python3
"""Compute 80-dim fbank features for the parts of a corpus and write lhotse cut manifests.

Usage (from ``egs/<corpus>/ASR``)::

    python -m icefall.data.compute_fbank --manifest-dir data/manifests --output-dir data/fbank \\
        --prefix librispeech --parts train-clean-100 dev-clean test-clean \\
        --perturb-speed-parts train-clean-100 --num-jobs 4

For each part it reads ``{prefix}_{recordings,supervisions}_{part}.jsonl.gz`` and writes
``{prefix}_cuts_{part}.jsonl.gz`` plus the features under ``{prefix}_feats_{part}/``. Parts
listed in ``--perturb-speed-parts`` also get x0.9 and x1.1 speed-perturbed copies (3x data)
unless ``--perturb-speed false``. A part whose cut manifest already exists is skipped. With
``--train-all-shuf-parts`` the cuts of those parts are concatenated and shuffled into
``{prefix}_cuts_train-all-shuf.jsonl.gz`` (LibriSpeech's 960 h training set).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import random
import tempfile
from concurrent.futures import Executor
from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional, Sequence

from lhotse import CutSet, load_manifest
from lhotse.qa import fix_manifests

from icefall.data.fbank import compute_features, feature_pool, log_report, speed_perturb
from icefall.utils import str2bool


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--output-dir", type=Path, default=Path("data/fbank"))
    parser.add_argument("--prefix", default="librispeech", help="corpus name in file names")
    parser.add_argument("--parts", nargs="+", required=True, help="parts to process")
    parser.add_argument(
        "--perturb-speed-parts",
        nargs="*",
        default=[],
        help="parts that get x0.9/x1.1 speed-perturbed copies",
    )
    parser.add_argument(
        "--perturb-speed",
        type=str2bool,
        default=True,
        help="false disables speed perturbation for every part",
    )
    parser.add_argument(
        "--train-all-shuf-parts",
        nargs="*",
        default=[],
        help="parts concatenated and shuffled into {prefix}_cuts_train-all-shuf.jsonl.gz",
    )
    parser.add_argument("--num-jobs", type=int, default=1, help="feature extraction processes")
    parser.add_argument("--seed", type=int, default=42, help="seed of the train-all shuffle")
    return parser


def cuts_path(output_dir: Path, prefix: str, part: str) -> Path:
    """``{output_dir}/{prefix}_cuts_{part}.jsonl.gz``."""
    return output_dir / f"{prefix}_cuts_{part}.jsonl.gz"


def load_part_cuts(manifest_dir: Path, prefix: str, part: str) -> Optional[CutSet]:
    """Cuts built from a part's recordings and supervisions, or None if they are missing."""
    recordings_path = manifest_dir / f"{prefix}_recordings_{part}.jsonl.gz"
    supervisions_path = manifest_dir / f"{prefix}_supervisions_{part}.jsonl.gz"
    if not recordings_path.is_file():
        logging.warning(f"{part}: {recordings_path} not found; skipping this part")
        return None
    recordings = load_manifest(recordings_path)
    supervisions = load_manifest(supervisions_path) if supervisions_path.is_file() else None
    if supervisions is not None:
        recordings, supervisions = fix_manifests(recordings, supervisions)
    return CutSet.from_manifests(recordings=recordings, supervisions=supervisions)


def compute_part(
    manifest_dir: Path,
    output_dir: Path,
    prefix: str,
    part: str,
    perturb: bool,
    num_jobs: int,
    executor: Optional[Executor] = None,
) -> None:
    """Compute features for one part unless its cut manifest already exists."""
    output = cuts_path(output_dir, prefix, part)
    if output.is_file():
        logging.info(f"{part}: {output} exists; skipping")
        return
    cuts = load_part_cuts(manifest_dir, prefix, part)
    if cuts is None:
        return
    if perturb:
        logging.info(f"{part}: adding x0.9 and x1.1 speed perturbation")
        cuts = speed_perturb(cuts)
    logging.info(f"{part}: computing fbank for {len(cuts)} cuts with {num_jobs} job(s)")
    storage_dir = output_dir / f"{prefix}_feats_{part}"
    report = compute_features(
        cuts, storage_dir, output, num_jobs=num_jobs, desc=part, executor=executor
    )
    log_report(report, part)


def shuffle_jsonl_gz(
    inputs: Sequence[Path], output: Path, seed: int, lines_per_bucket: int = 200_000
) -> int:
    """Write the lines of several ``.jsonl.gz`` files to ``output`` in a uniformly random order.

    Memory stays bounded for LibriSpeech-size inputs: each line goes to a random temporary
    bucket, then every bucket is shuffled in memory and appended (a uniform permutation).

    Returns:
      The number of lines written.
    """
    rng = random.Random(seed)
    num_lines = 0
    for path in inputs:
        with gzip.open(path, "rb") as f:
            num_lines += sum(1 for line in f if line.strip())
    num_buckets = max(1, -(-num_lines // lines_per_bucket))
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        bucket_paths = [Path(tmp) / f"bucket-{i}.jsonl" for i in range(num_buckets)]
        buckets = [open(p, "wb") for p in bucket_paths]
        try:
            for path in inputs:
                with gzip.open(path, "rb") as f:
                    for line in f:
                        if line.strip():
                            buckets[rng.randrange(num_buckets)].write(line.rstrip(b"\n") + b"\n")
        finally:
            for bucket in buckets:
                bucket.close()
        tmp_output = Path(tmp) / output.name
        with gzip.open(tmp_output, "wb") as out:
            for path in bucket_paths:
                lines = path.read_bytes().splitlines(keepends=True)
                rng.shuffle(lines)
                out.writelines(lines)
        tmp_output.replace(output)
    return num_lines


def make_train_all_shuf(output_dir: Path, prefix: str, parts: Sequence[str], seed: int) -> None:
    """Concatenate and shuffle the cuts of ``parts`` into ``{prefix}_cuts_train-all-shuf``."""
    output = cuts_path(output_dir, prefix, "train-all-shuf")
    if output.is_file():
        logging.info(f"{output} exists; skipping")
        return
    inputs = [cuts_path(output_dir, prefix, part) for part in parts]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        logging.warning(f"cannot build {output.name}; missing: {', '.join(missing)}")
        return
    num = shuffle_jsonl_gz(inputs, output, seed)
    logging.info(f"wrote {num} shuffled cuts to {output}")


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        # One pool for all parts: every worker process imports torch and lhotse only once.
        pool = stack.enter_context(feature_pool(args.num_jobs)) if args.num_jobs > 1 else None
        for part in args.parts:
            perturb = args.perturb_speed and part in args.perturb_speed_parts
            compute_part(
                args.manifest_dir,
                args.output_dir,
                args.prefix,
                part,
                perturb,
                args.num_jobs,
                executor=pool,
            )
    if args.train_all_shuf_parts:
        make_train_all_shuf(args.output_dir, args.prefix, args.train_all_shuf_parts, args.seed)


if __name__ == "__main__":
    main()
