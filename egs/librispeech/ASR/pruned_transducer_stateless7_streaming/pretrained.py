#!/usr/bin/env python3
"""Transcribe sound files with a ``pretrained.pt`` written by ``export.py``.

Usage (from ``egs/<corpus>/ASR``)::

  ./pruned_transducer_stateless7_streaming/pretrained.py \\
      --checkpoint pruned_transducer_stateless7_streaming/exp/pretrained.pt \\
      --tokens data/lang_bpe_500/tokens.txt --method greedy_search a.wav b.flac

``--method`` is one of greedy_search, beam_search, modified_beam_search, fast_beam_search.
Files may have any sample rate (they are resampled to 16 kHz) and several channels (mixed to
mono). Unreadable files are reported and skipped; the exit status is 1 if any was skipped.

By default the encoder runs chunk by chunk with ``streaming_forward``, exactly as sherpa-onnx
feeds the exported model (0.66 s of trailing silence, windows of ``decode_chunk_len + 7``
frames), so the transcripts equal those of ``jit_pretrained.py``, ``jit_trace_pretrained.py``,
``onnx_pretrained.py`` and sherpa-onnx. ``--simulated-streaming 1`` instead encodes the whole
utterance at once with chunked attention masks (icefall's ``pretrained.py``).
"""

import argparse
import logging
import sys
from typing import List

import numpy as np
import torch
from export import parse_params
from train import add_model_arguments, get_transducer_model

from icefall.decoding.beam_search import beam_search
from icefall.decoding.fast_beam_search import fast_beam_search_one_best
from icefall.decoding.fsa import trivial_graph
from icefall.decoding.greedy import greedy_search, greedy_search_batch
from icefall.decoding.modified_beam_search import modified_beam_search
from icefall.export.cli import script_parser, setup_script_logging, transcribe_sound_files
from icefall.export.model_loading import add_corpus_argument, set_vocabulary_params
from icefall.export.streaming import chunked_encoder_forward, utterance_features
from icefall.export.streaming_reference import resample, sherpa_fbank
from icefall.utils import AttributeDict, str2bool

METHODS = ("greedy_search", "beam_search", "modified_beam_search", "fast_beam_search")


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    add_corpus_argument(parser)
    parser.add_argument("--checkpoint", required=True, help="pretrained.pt from export.py")
    parser.add_argument("--tokens", default="data/lang_bpe_500/tokens.txt", help="tokens.txt")
    parser.add_argument("--method", default="greedy_search", choices=METHODS)
    parser.add_argument("sound_files", nargs="+", help="sound files to transcribe")
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=16000,
        help="the model's sample rate (16000); files at other rates are resampled to it",
    )
    parser.add_argument("--beam-size", type=int, default=4, help="for (modified) beam search")
    parser.add_argument("--beam", type=float, default=4, help="fast_beam_search beam")
    parser.add_argument("--max-contexts", type=int, default=4, help="fast_beam_search")
    parser.add_argument("--max-states", type=int, default=8, help="fast_beam_search")
    parser.add_argument("--context-size", type=int, default=2, help="decoder context size")
    parser.add_argument(
        "--max-sym-per-frame", type=int, default=1, help="greedy_search symbols per frame"
    )
    parser.add_argument(
        "--simulated-streaming",
        type=str2bool,
        default=False,
        help="encode whole utterances with chunk masks instead of chunk by chunk",
    )
    add_model_arguments(parser)
    return parser


def encode(
    model: torch.nn.Module, samples: np.ndarray, sample_rate: int, simulated: bool
) -> torch.Tensor:
    """Encoder output (1, T', encoder_dim) of one utterance."""
    if simulated:
        features = torch.from_numpy(sherpa_fbank(resample(samples, sample_rate), 16000, 0.0))
        x_lens = torch.tensor([features.size(0)], dtype=torch.int64)
        encoder_out, _ = model.encoder(x=features.unsqueeze(0), x_lens=x_lens)
        return encoder_out
    chunk_shift = model.encoder.decode_chunk_size * 2
    return chunked_encoder_forward(
        utterance_features(samples, sample_rate),
        model.encoder.streaming_forward,
        model.encoder.get_init_state(device=torch.device("cpu")),
        chunk_size=chunk_shift + 7,
        chunk_shift=chunk_shift,
    )


def search(model: torch.nn.Module, encoder_out: torch.Tensor, params: AttributeDict) -> List[int]:
    """Token ids of one utterance; encoder_out: (1, T', encoder_dim)."""
    lens = torch.tensor([encoder_out.size(1)], dtype=torch.int64)
    if params.method == "greedy_search" and params.max_sym_per_frame == 1:
        return greedy_search_batch(model, encoder_out, lens)[0]
    if params.method == "greedy_search":
        return greedy_search(model, encoder_out, params.max_sym_per_frame)
    if params.method == "beam_search":
        return beam_search(model, encoder_out, beam=params.beam_size)
    if params.method == "modified_beam_search":
        return modified_beam_search(model, encoder_out, lens, beam=params.beam_size)[0]
    graph = trivial_graph(params.vocab_size - 1)
    return fast_beam_search_one_best(
        model, graph, encoder_out, lens, params.beam, params.max_states, params.max_contexts
    )[0]


@torch.no_grad()
def main() -> None:
    parser = get_parser()
    params = parse_params(parser)
    if params.sample_rate != 16000:
        parser.error(f"--sample-rate {params.sample_rate}: the model works on 16 kHz features")
    token_table = set_vocabulary_params(params, params.tokens)
    logging.info(f"Decoding parameters: {params}")

    model = get_transducer_model(params)
    checkpoint = torch.load(params.checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"], strict=True)
    model.eval()
    model.unk_id = params.unk_id

    def transcribe(samples: np.ndarray, sample_rate: int) -> List[int]:
        encoder_out = encode(model, samples, sample_rate, params.simulated_streaming)
        return search(model, encoder_out, params)

    if transcribe_sound_files(params.sound_files, transcribe, token_table):
        sys.exit(1)


if __name__ == "__main__":
    setup_script_logging()
    main()
