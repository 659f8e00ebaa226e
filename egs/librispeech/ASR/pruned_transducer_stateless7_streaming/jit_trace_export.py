#!/usr/bin/env python3
"""Export the streaming Zipformer transducer with ``torch.jit.trace`` (three files).

Usage (from ``egs/<corpus>/ASR``)::

  ./pruned_transducer_stateless7_streaming/jit_trace_export.py --epoch 30 --avg 9 \\
      --exp-dir pruned_transducer_stateless7_streaming/exp --tokens data/lang_bpe_500/tokens.txt

writes to ``--exp-dir``:

* ``encoder_jit_trace.pt``: ``(x (N, T, 80), x_lens (N,), states) -> (encoder_out
  (N, T', encoder_dim), encoder_out_lens, new_states)``, one streaming step with
  ``T = decode_chunk_len + 7``;
* ``decoder_jit_trace.pt``: ``y (N, context_size) -> (N, decoder_dim)`` (``-1`` = no token);
* ``joiner_jit_trace.pt``: ``(encoder_out (N, encoder_dim), decoder_out (N, decoder_dim)) ->
  logits (N, vocab_size)`` (projections included).

Each file carries ``export_info.json`` (``torch.jit.load(..., _extra_files=...)``): chunk sizes
and initial-state shapes for the encoder, ``context_size``/``vocab_size``/``blank_id`` for the
decoder. Decode with ``jit_trace_pretrained.py``.
"""

import argparse
import json
import logging
from pathlib import Path
from typing import Dict

import torch
from export import load_export_model
from onnx_wrappers import PAD_LENGTH, DecoderStep, StreamingEncoderStep
from scaling_converter import convert_scaled_to_non_scaled
from train import add_model_arguments

from icefall.export.cli import script_parser, setup_script_logging
from icefall.export.jit import eager_branches_while_tracing, trace_forward
from icefall.export.model_loading import add_export_arguments

EXTRA_FILE = "export_info.json"


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    add_export_arguments(parser, epoch=28, avg=15)
    add_model_arguments(parser)
    return parser


def _save(module: torch.jit.ScriptModule, filename: Path, info: Dict) -> None:
    torch.jit.save(module, str(filename), _extra_files={EXTRA_FILE: json.dumps(info)})
    logging.info(f"Saved {filename}")


def export_encoder_jit_trace(encoder: torch.nn.Module, filename: Path, decode_chunk_len: int):
    """Traces one streaming step of ``encoder`` (a converted Zipformer) and saves it."""
    states = encoder.get_init_state(device=torch.device("cpu"))
    chunk_size = decode_chunk_len + PAD_LENGTH
    x = torch.zeros(1, chunk_size, 80, dtype=torch.float32)
    x_lens = torch.tensor([chunk_size], dtype=torch.int64)
    step = StreamingEncoderStep(encoder)
    try:
        traced = torch.jit.trace(step, (x, x_lens, states), check_trace=False)
    except RuntimeError as e:  # the tracer scripts @torch.jit.export methods and may fail there
        logging.warning(f"torch.jit.trace failed ({e}); tracing with exported methods hidden")
        traced = trace_forward(step, (x, x_lens, states))
    info = {
        "decode_chunk_len": decode_chunk_len,
        "pad_length": PAD_LENGTH,
        "state_shapes": [list(s.shape) for s in states],
        "state_dtypes": [str(s.dtype).replace("torch.", "") for s in states],
    }
    _save(traced, filename, info)


def export_decoder_jit_trace(decoder: torch.nn.Module, filename: Path) -> None:
    """Traces the decoding-time decoder call, recording the ``-1``-safe eager branch."""
    y = torch.zeros(10, decoder.context_size, dtype=torch.int64)
    with eager_branches_while_tracing():
        traced = torch.jit.trace(DecoderStep(decoder), (y,), check_trace=False)
    info = {
        "context_size": decoder.context_size,
        "vocab_size": decoder.vocab_size,
        "blank_id": decoder.blank_id,
    }
    _save(traced, filename, info)


def export_joiner_jit_trace(joiner: torch.nn.Module, filename: Path) -> None:
    """Traces the joiner on unprojected 2-D inputs (projections included)."""
    encoder_out = torch.rand(11, joiner.encoder_proj.in_features)
    decoder_out = torch.rand(11, joiner.decoder_proj.in_features)
    traced = torch.jit.trace(joiner, (encoder_out, decoder_out), check_trace=False)
    _save(traced, filename, {"joiner_dim": joiner.output_linear.in_features})


@torch.no_grad()
def main() -> None:
    params, model = load_export_model(get_parser())
    model = convert_scaled_to_non_scaled(model, inplace=False).eval()
    exp_dir = Path(params.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    export_encoder_jit_trace(
        model.encoder, exp_dir / "encoder_jit_trace.pt", params.decode_chunk_len
    )
    export_decoder_jit_trace(model.decoder, exp_dir / "decoder_jit_trace.pt")
    export_joiner_jit_trace(model.joiner, exp_dir / "joiner_jit_trace.pt")


if __name__ == "__main__":
    setup_script_logging()
    main()
