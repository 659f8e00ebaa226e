#!/usr/bin/env python3
"""Export a trained streaming Zipformer transducer.

Usage (from ``egs/<corpus>/ASR``)::

  # exp_dir/pretrained.pt = {"model": state_dict}, for pretrained.py
  ./pruned_transducer_stateless7_streaming/export.py --epoch 30 --avg 9 \\
      --exp-dir pruned_transducer_stateless7_streaming/exp --tokens data/lang_bpe_500/tokens.txt

  # exp_dir/cpu_jit.pt (torch.jit.script), for jit_pretrained.py or any program with torch
  ./pruned_transducer_stateless7_streaming/export.py --epoch 30 --avg 9 --jit 1

``cpu_jit.pt`` loads with ``torch.jit.load`` alone (no icefall, no recipe files). Its
``forward(x, x_lens, states)`` is one streaming step of the encoder; ``get_init_state()``,
``run_decoder(y)``, ``run_joiner(encoder_out, decoder_out)``, ``encoder``, ``decoder`` and
``joiner`` are exported too, with the integer attributes ``decode_chunk_len``, ``pad_length``,
``context_size``, ``vocab_size`` and ``blank_id``.
"""

import argparse
import logging
from pathlib import Path
from typing import Tuple

import torch
from onnx_wrappers import StreamingTransducerJit
from scaling_converter import convert_scaled_to_non_scaled
from train import add_model_arguments, apply_corpus_defaults, get_params, get_transducer_model

from icefall.export.cli import script_parser, setup_script_logging
from icefall.export.jit import check_loads_without_toolkit
from icefall.export.model_loading import (
    add_export_arguments,
    load_model_from_params,
    set_vocabulary_params,
)
from icefall.utils import AttributeDict, str2bool


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    add_export_arguments(parser)
    parser.add_argument(
        "--jit",
        type=str2bool,
        default=False,
        help="write cpu_jit.pt with torch.jit.script instead of pretrained.pt",
    )
    add_model_arguments(parser)
    return parser


def export_jit(model: torch.nn.Module, decode_chunk_len: int, filename: Path) -> None:
    """Scripts the streaming view of ``model`` (see the module docstring) and saves it."""
    model = convert_scaled_to_non_scaled(model, inplace=False)
    jit_model = StreamingTransducerJit(
        model.encoder, model.decoder, model.joiner, decode_chunk_len=decode_chunk_len
    )
    scripted = torch.jit.script(jit_model)
    scripted.save(str(filename))
    logging.info(f"Saved {filename}")
    info = check_loads_without_toolkit(filename)
    logging.info(f"{filename} loads without icefall; methods: {', '.join(info['methods'])}")


def parse_params(parser: argparse.ArgumentParser) -> AttributeDict:
    """``get_params()`` updated with the command line, parsed after the corpus defaults are
    applied (see ``train.apply_corpus_defaults``)."""
    apply_corpus_defaults(parser)
    params = get_params()
    params.update(vars(parser.parse_args()))
    return params


def load_export_model(parser: argparse.ArgumentParser) -> Tuple[AttributeDict, torch.nn.Module]:
    """Parses the flags of an export script, reads ``--tokens`` and loads the checkpoints the
    flags select.

    Returns:
      The parameters (with ``vocab_size``, ``blank_id``, ``unk_id``) and the model (CPU, eval).
    """
    params = parse_params(parser)
    set_vocabulary_params(params, params.tokens)
    logging.info(f"Export parameters: {params}")
    return params, load_model_from_params(params, get_transducer_model)


@torch.no_grad()
def main() -> None:
    params, model = load_export_model(get_parser())
    params.exp_dir.mkdir(parents=True, exist_ok=True)
    if params.jit:
        export_jit(model, params.decode_chunk_len, params.exp_dir / "cpu_jit.pt")
    else:
        filename = params.exp_dir / "pretrained.pt"
        torch.save({"model": model.state_dict()}, filename)
        logging.info(f"Saved {filename}")


if __name__ == "__main__":
    setup_script_logging()
    main()
