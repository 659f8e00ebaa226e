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
import logging
import sys

from icefall.export.streaming_reference import (
    OnnxStreamingTransducer,
    ids_to_text,
    read_sound_files,
    resample,
    sherpa_fbank,
)
from icefall.tokens import read_tokens


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder-model-filename", required=True, help="encoder .onnx")
    parser.add_argument("--decoder-model-filename", required=True, help="decoder .onnx")
    parser.add_argument("--joiner-model-filename", required=True, help="joiner .onnx")
    parser.add_argument("--tokens", required=True, help="tokens.txt")
    parser.add_argument("--num-threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("sound_files", nargs="+", help="sound files (any sample rate)")
    return parser


def main() -> None:
    args = get_parser().parse_args()
    id_to_symbol = {i: s for s, i in read_tokens(args.tokens)}
    symbol_to_id = {s: i for i, s in id_to_symbol.items()}
    model = OnnxStreamingTransducer(
        args.encoder_model_filename,
        args.decoder_model_filename,
        args.joiner_model_filename,
        num_threads=args.num_threads,
    )
    utterances, errors = read_sound_files(args.sound_files)
    for error in errors:
        logging.error(error)
    for path, samples, sample_rate in utterances:
        features = sherpa_fbank(resample(samples, sample_rate))
        hyp = model.greedy_search(features, unk_id=symbol_to_id.get("<unk>"))
        print(f"{path}:\n{ids_to_text(hyp, id_to_symbol)}\n", flush=True)
    if errors:
        logging.error(f"{len(errors)} of {len(args.sound_files)} files could not be read")
        sys.exit(1)


if __name__ == "__main__":
    logging.basicConfig(
        format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
        level=logging.INFO,
    )
    main()
