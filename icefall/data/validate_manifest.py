#!/usr/bin/env python3
"""Validate lhotse cut manifests (features present, supervisions inside cuts, non-empty text).

Usage::

    python -m icefall.data.validate_manifest data/fbank/librispeech_cuts_dev-clean.jsonl.gz ...

Prints one report per manifest and exits with status 1 when any manifest has problems.
``--read-data`` also loads every feature matrix.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from lhotse import load_manifest_lazy

from icefall.data.validate import validate_cuts


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifests", nargs="+", type=Path, help="cut manifests (.jsonl.gz)")
    parser.add_argument("--read-data", action="store_true", help="load every feature matrix")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    all_ok = True
    for path in args.manifests:
        if not path.is_file():
            logging.error(f"{path}: file not found")
            all_ok = False
            continue
        report = validate_cuts(load_manifest_lazy(path), name=str(path), read_data=args.read_data)
        logging.log(logging.INFO if report.ok else logging.ERROR, report.format())
        all_ok = all_ok and report.ok
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
