"""Start-up and output helpers shared by the recipes' export and ``*pretrained.py`` scripts.

Nothing here imports torch, so the torch-free ``onnx_pretrained.py`` uses it too.
"""

import argparse
import logging
from typing import Callable, Dict, Sequence

import numpy as np

from icefall.export.streaming_reference import ids_to_text, read_sound_files

LOG_FORMAT = "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"


def setup_script_logging() -> None:
    """INFO logging to stderr, each line naming its source file and line."""
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO)


def script_parser(description: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows ``description`` (the script's docstring) as written."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_model_file_arguments(parser: argparse.ArgumentParser, suffix: str) -> None:
    """Required ``--{encoder,decoder,joiner}-model-filename``; ``suffix`` completes the help,
    e.g. ``_jit_trace.pt`` gives ``encoder_jit_trace.pt``."""
    for part in ("encoder", "decoder", "joiner"):
        parser.add_argument(f"--{part}-model-filename", required=True, help=f"{part}{suffix}")


def add_sound_file_arguments(parser: argparse.ArgumentParser) -> None:
    """Required ``--tokens`` and the positional ``sound_files`` to transcribe."""
    parser.add_argument("--tokens", required=True, help="tokens.txt")
    parser.add_argument("sound_files", nargs="+", help="sound files (any sample rate)")


def transcribe_sound_files(
    sound_files: Sequence[str],
    transcribe: Callable[[np.ndarray, int], Sequence[int]],
    token_table: Dict[str, int],
) -> int:
    """Prints ``{path}:\\n{text}\\n`` for every readable file and logs every unreadable one.

    Args:
      sound_files: paths of any format and sample rate soundfile reads (several channels are
        mixed to mono).
      transcribe: ``(samples (S,) float32, sample_rate) -> token ids`` of one utterance.
      token_table: ``{symbol: id}`` of tokens.txt.

    Returns:
      The number of files that could not be read (the scripts then exit with status 1).
    """
    id_to_symbol = {i: s for s, i in token_table.items()}
    utterances, errors = read_sound_files(sound_files)
    for error in errors:
        logging.error(error)
    for path, samples, sample_rate in utterances:
        hyp = transcribe(samples, sample_rate)
        print(f"{path}:\n{ids_to_text(hyp, id_to_symbol)}\n", flush=True)
    if errors:
        logging.error(f"{len(errors)} of {len(sound_files)} files could not be read")
    return len(errors)
