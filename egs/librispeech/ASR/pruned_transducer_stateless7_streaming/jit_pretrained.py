#!/usr/bin/env python3
"""Transcribe sound files with ``cpu_jit.pt`` (``export.py --jit 1``); no recipe code needed.

Usage (from ``egs/<corpus>/ASR``)::

  ./pruned_transducer_stateless7_streaming/jit_pretrained.py \\
      --nn-model-filename pruned_transducer_stateless7_streaming/exp/cpu_jit.pt \\
      --tokens data/lang_bpe_500/tokens.txt a.wav b.flac

The scripted model's ``forward`` is one streaming step; the audio is fed chunk by chunk as
sherpa-onnx does (see ``pretrained.py``), so the transcripts equal ``pretrained.py``'s.
Unreadable files are reported and skipped (exit status 1).
"""

import argparse
import sys
from types import SimpleNamespace
from typing import List

import numpy as np
import torch

from icefall.decoding.greedy import greedy_search_batch
from icefall.decoding.modified_beam_search import modified_beam_search
from icefall.export.cli import (
    add_sound_file_arguments,
    script_parser,
    setup_script_logging,
    transcribe_sound_files,
)
from icefall.export.streaming import chunked_encoder_forward, utterance_features
from icefall.tokens import read_token_table


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument("--nn-model-filename", required=True, help="cpu_jit.pt from export.py")
    parser.add_argument(
        "--method", default="greedy_search", choices=["greedy_search", "modified_beam_search"]
    )
    parser.add_argument("--beam-size", type=int, default=4, help="for modified_beam_search")
    add_sound_file_arguments(parser)
    return parser


@torch.no_grad()
def main() -> None:
    args = get_parser().parse_args()
    token_table = read_token_table(args.tokens)
    model = torch.jit.load(args.nn_model_filename, map_location="cpu")
    model.eval()
    # what icefall.decoding's searches use: decoder, joiner (+ projections), unk_id
    searchable = SimpleNamespace(
        decoder=model.decoder,
        joiner=model.joiner,
        unk_id=token_table.get("<unk>", model.blank_id),
    )
    chunk_size = model.decode_chunk_len + model.pad_length

    def transcribe(samples: np.ndarray, sample_rate: int) -> List[int]:
        encoder_out = chunked_encoder_forward(
            utterance_features(samples, sample_rate),
            model,
            model.get_init_state(),
            chunk_size=chunk_size,
            chunk_shift=model.decode_chunk_len,
        )
        lens = torch.tensor([encoder_out.size(1)], dtype=torch.int64)
        if args.method == "greedy_search":
            return greedy_search_batch(searchable, encoder_out, lens)[0]
        return modified_beam_search(searchable, encoder_out, lens, beam=args.beam_size)[0]

    if transcribe_sound_files(args.sound_files, transcribe, token_table):
        sys.exit(1)


if __name__ == "__main__":
    setup_script_logging()
    main()
