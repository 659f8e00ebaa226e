#!/usr/bin/env python3
"""Check the ONNX files of ``export-onnx.py`` against ``cpu_jit.pt`` (``export.py --jit 1``)
on random input.

Usage (from ``egs/<corpus>/ASR``)::

  exp=pruned_transducer_stateless7_streaming/exp
  ./pruned_transducer_stateless7_streaming/onnx_check.py \\
      --jit-filename $exp/cpu_jit.pt \\
      --onnx-encoder-filename $exp/encoder-epoch-30-avg-9.onnx \\
      --onnx-decoder-filename $exp/decoder-epoch-30-avg-9.onnx \\
      --onnx-joiner-filename $exp/joiner-epoch-30-avg-9.onnx

For batch sizes 1 and 3 it feeds the same random features through several streaming steps
of both models (states chained), random token contexts (including -1) through both decoders
and random vectors through both joiners, and reports the largest difference relative to the
output's magnitude. Exits with status 1 when one exceeds ``--tolerance`` (float files: about
1e-6 is typical; int8 files need a looser tolerance such as 0.5).
"""

import argparse
import logging
import sys

import numpy as np
import torch
from zipformer import stack_states

from icefall.export.cli import script_parser, setup_script_logging
from icefall.export.streaming_reference import OnnxStreamingTransducer


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument("--jit-filename", required=True, help="cpu_jit.pt")
    parser.add_argument("--onnx-encoder-filename", required=True)
    parser.add_argument("--onnx-decoder-filename", required=True)
    parser.add_argument("--onnx-joiner-filename", required=True)
    parser.add_argument("--num-chunks", type=int, default=3, help="streaming steps to compare")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="max |diff| / max(1, max |torch output|)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def relative_diff(onnx_out: np.ndarray, torch_out: torch.Tensor) -> float:
    reference = torch_out.detach().numpy()
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    return float(np.abs(onnx_out.astype(reference.dtype) - reference).max(initial=0.0)) / scale


@torch.no_grad()
def main() -> None:
    args = get_parser().parse_args()
    torch.manual_seed(args.seed)
    jit_model = torch.jit.load(args.jit_filename, map_location="cpu").eval()
    onnx_model = OnnxStreamingTransducer(
        args.onnx_encoder_filename, args.onnx_decoder_filename, args.onnx_joiner_filename
    )
    chunk_size = jit_model.decode_chunk_len + jit_model.pad_length
    if chunk_size != onnx_model.chunk_size:
        sys.exit(f"chunk size differs: cpu_jit.pt {chunk_size}, ONNX T={onnx_model.chunk_size}")
    worst = {}
    for batch_size in (1, 3):
        torch_states = stack_states([jit_model.get_init_state()] * batch_size)
        onnx_states = [s.numpy() for s in torch_states]
        for _ in range(args.num_chunks):
            x = torch.randn(batch_size, chunk_size, 80)
            x_lens = torch.full((batch_size,), chunk_size, dtype=torch.int64)
            encoder_out, _, torch_states = jit_model(x, x_lens, torch_states)
            onnx_out, onnx_states = onnx_model.run_encoder(x.numpy(), onnx_states)
            projected = jit_model.joiner.encoder_proj(encoder_out)
            diffs = [relative_diff(onnx_out, projected)]
            diffs += [relative_diff(o, t) for o, t in zip(onnx_states, torch_states)]
            worst["encoder"] = max(worst.get("encoder", 0.0), *diffs)
        y = torch.randint(-1, jit_model.vocab_size, (batch_size, jit_model.context_size))
        decoder_out = jit_model.run_decoder(y)
        worst["decoder"] = max(
            worst.get("decoder", 0.0), relative_diff(onnx_model.run_decoder(y.numpy()), decoder_out)
        )
        encoder_frame = torch.randn(batch_size, decoder_out.size(1))
        logits = jit_model.joiner(encoder_frame, decoder_out, project_input=False)
        onnx_logits = onnx_model.run_joiner(encoder_frame.numpy(), decoder_out.numpy())
        worst["joiner"] = max(worst.get("joiner", 0.0), relative_diff(onnx_logits, logits))
    for part, diff in worst.items():
        logging.info(f"{part}: max relative difference {diff:.3g}")
    failed = [part for part, diff in worst.items() if diff > args.tolerance]
    if failed:
        logging.error(f"{', '.join(failed)} differ by more than --tolerance {args.tolerance}")
        sys.exit(1)
    logging.info("ONNX and TorchScript agree")


if __name__ == "__main__":
    setup_script_logging()
    main()
