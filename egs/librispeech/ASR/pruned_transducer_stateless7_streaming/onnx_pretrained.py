#!/usr/bin/env python3
"""Transcribe sound files with the ONNX files of ``export-onnx.py``, using onnxruntime only.

No PyTorch is imported: features come from kaldi-native-fbank, the models run in
onnxruntime, and the loop (chunking, state feedback, greedy search) is the one sherpa-onnx runs,
so the tokens equal sherpa-onnx's on 16 kHz audio.

Usage (from ``egs/<corpus>/ASR``)::

  exp=pruned_transducer_stateless7_streaming/exp
  ./pruned_transducer_stateless7_streaming/onnx_pretrained.py \\
      --encoder-model-filename $exp/encoder-epoch-30-avg-9.onnx \\
      --decoder-model-filename $exp/decoder-epoch-30-avg-9.onnx \\
      --joiner-model-filename $exp/joiner-epoch-30-avg-9.onnx \\
      --tokens data/lang_bpe_500/tokens.txt a.wav b.flac

Files of any sample rate are resampled to 16 kHz. Unreadable files are reported and skipped
(exit status 1).
"""

import argparse
import sys
from typing import List

import numpy as np

from icefall.export.cli import (
    add_model_file_arguments,
    add_sound_file_arguments,
    script_parser,
    setup_script_logging,
    transcribe_sound_files,
)
from icefall.export.streaming_reference import OnnxStreamingTransducer, resample, sherpa_fbank
from icefall.tokens import read_tokens


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    add_model_file_arguments(parser, " .onnx")
    parser.add_argument("--num-threads", type=int, default=1, help="onnxruntime threads")
    add_sound_file_arguments(parser)
    return parser


def main() -> None:
    args = get_parser().parse_args()
    token_table = dict(read_tokens(args.tokens))
    model = OnnxStreamingTransducer(
        args.encoder_model_filename,
        args.decoder_model_filename,
        args.joiner_model_filename,
        num_threads=args.num_threads,
    )

    def transcribe(samples: np.ndarray, sample_rate: int) -> List[int]:
        features = sherpa_fbank(resample(samples, sample_rate))
        return model.greedy_search(features, unk_id=token_table.get("<unk>"))

    if transcribe_sound_files(args.sound_files, transcribe, token_table):
        sys.exit(1)


if __name__ == "__main__":
    setup_script_logging()
    main()
