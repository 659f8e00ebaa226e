#!/usr/bin/env python3
"""Train a sentencepiece unigram BPE model and write a lang dir.

Usage::

    python -m icefall.data.train_bpe --transcript data/lang_bpe_500/transcript_words.txt \\
        --lang-dir data/lang_bpe_500 --vocab-size 500

Writes ``bpe.model`` and ``tokens.txt`` (``<blk>``=0, ``<sos/eos>``=1, ``<unk>``=2). Running it
again keeps the existing model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from icefall.data.bpe import BpeTrainingError, train_bpe_model


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transcript", type=Path, required=True, help="one sentence per line")
    parser.add_argument("--lang-dir", type=Path, required=True, help="output folder")
    parser.add_argument("--vocab-size", type=int, required=True, help="number of tokens")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    try:
        train_bpe_model(args.transcript, args.lang_dir, args.vocab_size)
    except BpeTrainingError as error:
        raise SystemExit(f"train_bpe: {error}") from error


if __name__ == "__main__":
    main()
