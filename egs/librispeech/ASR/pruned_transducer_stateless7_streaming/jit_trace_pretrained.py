#!/usr/bin/env python3
"""Transcribe sound files with the traced models of ``jit_trace_export.py`` (greedy search).

Usage (from ``egs/<corpus>/ASR``)::

  ./pruned_transducer_stateless7_streaming/jit_trace_pretrained.py \\
      --encoder-model-filename pruned_transducer_stateless7_streaming/exp/encoder_jit_trace.pt \\
      --decoder-model-filename pruned_transducer_stateless7_streaming/exp/decoder_jit_trace.pt \\
      --joiner-model-filename pruned_transducer_stateless7_streaming/exp/joiner_jit_trace.pt \\
      --tokens data/lang_bpe_500/tokens.txt a.wav b.flac

The audio is fed chunk by chunk as sherpa-onnx does (see ``pretrained.py``); greedy search
emits at most one symbol per frame and never blank or ``<unk>``, so the transcripts equal
``pretrained.py --method greedy_search``'s. Unreadable files are reported and skipped.
"""

import argparse
import json
import sys
from typing import Dict, List, Tuple

import numpy as np
import torch

from icefall.export.cli import (
    add_model_file_arguments,
    add_sound_file_arguments,
    script_parser,
    setup_script_logging,
    transcribe_sound_files,
)
from icefall.export.streaming import chunked_encoder_forward, utterance_features
from icefall.tokens import read_token_table

EXTRA_FILE = "export_info.json"


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    add_model_file_arguments(parser, "_jit_trace.pt")
    add_sound_file_arguments(parser)
    return parser


def load_traced(filename: str) -> Tuple[torch.jit.ScriptModule, Dict]:
    """A traced module and the ``export_info.json`` saved with it."""
    extra = {EXTRA_FILE: ""}
    module = torch.jit.load(filename, map_location="cpu", _extra_files=extra)
    module.eval()
    return module, json.loads(extra[EXTRA_FILE] or "{}")


def greedy_search(
    decoder: torch.jit.ScriptModule,
    joiner: torch.jit.ScriptModule,
    encoder_out: torch.Tensor,
    context_size: int,
    blank_id: int,
    unk_id: int,
) -> List[int]:
    """One symbol per frame at most; encoder_out: (1, T', encoder_dim) -> token ids."""
    context = [-1] * (context_size - 1) + [blank_id]
    decoder_out = decoder(torch.tensor([context], dtype=torch.int64))
    hyp: List[int] = []
    for t in range(encoder_out.size(1)):
        logits = joiner(encoder_out[:, t], decoder_out)
        token = int(logits.argmax(dim=-1).item())
        if token in (blank_id, unk_id):
            continue
        hyp.append(token)
        context = context[1:] + [token]
        decoder_out = decoder(torch.tensor([context], dtype=torch.int64))
    return hyp


@torch.no_grad()
def main() -> None:
    args = get_parser().parse_args()
    token_table = read_token_table(args.tokens)
    encoder, encoder_info = load_traced(args.encoder_model_filename)
    decoder, decoder_info = load_traced(args.decoder_model_filename)
    joiner, _ = load_traced(args.joiner_model_filename)
    init_states = [
        torch.zeros(shape, dtype=getattr(torch, dtype))
        for shape, dtype in zip(encoder_info["state_shapes"], encoder_info["state_dtypes"])
    ]
    chunk_shift = encoder_info["decode_chunk_len"]
    blank_id = decoder_info["blank_id"]

    def transcribe(samples: np.ndarray, sample_rate: int) -> List[int]:
        encoder_out = chunked_encoder_forward(
            utterance_features(samples, sample_rate),
            encoder,
            init_states,
            chunk_size=chunk_shift + encoder_info["pad_length"],
            chunk_shift=chunk_shift,
        )
        return greedy_search(
            decoder,
            joiner,
            encoder_out,
            decoder_info["context_size"],
            blank_id,
            token_table.get("<unk>", blank_id),
        )

    if transcribe_sound_files(args.sound_files, transcribe, token_table):
        sys.exit(1)


if __name__ == "__main__":
    setup_script_logging()
    main()
