#!/usr/bin/env python3
"""Decoding speed: real-time factor of every search and real streaming throughput (JSON).

Run from the repository root (or anywhere) after ``egs/tiny/ASR/prepare.sh``::

  python benchmarks/decode.py --work-dir egs/tiny/ASR \\
      --exp-dir pruned_transducer_stateless7_streaming/exp --epoch 12 --avg 1

It uses the trained checkpoint selected by ``--exp-dir/--epoch/--avg/--use-averaged-model``
(relative to ``--work-dir``); without one it falls back to a randomly initialised model of the
corpus's configuration and says so (``"random_weights": true``). All numbers come from one run,
on one device, with ``--num-threads`` intra-op threads:

* ``encoder_rtf``: simulated-streaming encoder time / audio time;
* ``methods.<name>.search_rtf``: search time on the same encoder output / audio time, and
  ``rtf`` = encoder + search;
* ``streaming.<method>``: real chunk-wise decoding (features from audio with kaldi-native-fbank,
  ``streaming_forward``, search) with ``--num-decode-streams`` streams: its ``rtf`` and
  ``streams_per_core`` = audio seconds decoded per wall second per thread, i.e. how many
  real-time streams one core sustains.
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs/librispeech/ASR/pruned_transducer_stateless7_streaming"
sys.path.insert(0, str(RECIPE))

METHODS = (
    "greedy_search",
    "beam_search",
    "modified_beam_search",
    "fast_beam_search",
    "fast_beam_search_nbest",
    "fast_beam_search_nbest_oracle",
)
STREAMING_METHODS = ("greedy_search", "modified_beam_search", "fast_beam_search")


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", type=Path, default=REPO / "egs/tiny/ASR")
    parser.add_argument("--corpus", type=str, default="tiny")
    parser.add_argument("--exp-dir", type=str, default="pruned_transducer_stateless7_streaming/exp")
    parser.add_argument("--epoch", type=int, default=12)
    parser.add_argument("--iter", type=int, default=0)
    parser.add_argument("--avg", type=int, default=1)
    parser.add_argument("--use-averaged-model", type=int, default=0)
    parser.add_argument("--test-set", type=str, default="test-clean")
    parser.add_argument("--max-utterances", type=int, default=50)
    parser.add_argument("--max-duration", type=float, default=100.0, help="seconds per batch")
    parser.add_argument("--methods", type=str, default=",".join(METHODS))
    parser.add_argument(
        "--lm-arpa",
        type=Path,
        default=None,
        help="word ARPA LM; when given, fast_beam_search_nbest_LG is measured too",
    )
    parser.add_argument("--streaming-methods", type=str, default=",".join(STREAMING_METHODS))
    parser.add_argument("--num-decode-streams", type=int, default=16)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--device", type=str, default="cpu")
    return parser.parse_args()


def load_params_and_model(args: argparse.Namespace, device: torch.device):
    import decode
    import train

    from icefall.data.datamodule import AsrDataModule

    parser = decode.get_parser()
    AsrDataModule.add_arguments(parser)
    argv = ["--corpus", args.corpus, "--exp-dir", args.exp_dir]
    argv += ["--epoch", str(args.epoch), "--iter", str(args.iter), "--avg", str(args.avg)]
    argv += ["--use-averaged-model", str(args.use_averaged_model)]
    if args.lm_arpa is not None:
        argv += ["--lm-arpa", str(args.lm_arpa.resolve()), "--ngram-lm-scale", "0.3"]
    train.apply_corpus_defaults(parser, argv)
    params = train.get_params()
    params.update(vars(parser.parse_args(argv)))
    params.exp_dir = Path(params.exp_dir)
    params.num_active_paths = 4
    random_weights = False
    try:
        model, sp = decode.load_model(params, device)
    except FileNotFoundError as e:
        if "BPE model" in str(e):
            raise
        logging.warning(f"{e}; benchmarking a randomly initialised model instead")
        torch.manual_seed(0)
        model = train.get_transducer_model(params).to(device).eval()
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        sp.load(str(params.bpe_model))
        random_weights = True
    return params, model, sp, random_weights


def batches(cuts, max_duration: float):

    batch, seconds = [], 0.0
    for cut in cuts:
        if batch and seconds + cut.duration > max_duration:
            yield batch
            batch, seconds = [], 0.0
        batch.append(cut)
        seconds += cut.duration
    if batch:
        yield batch


def make_batch(cuts, device: torch.device) -> dict:
    import math

    feats = [torch.from_numpy(c.load_features()) for c in cuts]
    lens = torch.tensor([f.size(0) for f in feats])
    inputs = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=math.log(1e-10))
    texts = [" ".join(s.text for s in c.supervisions) for c in cuts]
    return {"inputs": inputs.to(device), "supervisions": {"num_frames": lens, "text": texts}}


@torch.no_grad()
def main() -> None:
    args = get_args()
    if args.lm_arpa is not None:
        args.lm_arpa = args.lm_arpa.resolve()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.num_threads)
    device = torch.device(args.device)
    os.chdir(args.work_dir)

    import decode
    import lhotse
    import streaming_decode

    from icefall.features import compute_fbank

    params, model, sp, random_weights = load_params_and_model(args, device)
    cut_file = Path("data/fbank") / f"{args.corpus}_cuts_{args.test_set}.jsonl.gz"
    cuts = list(lhotse.load_manifest_lazy(cut_file))[: args.max_utterances]
    audio_seconds = sum(c.duration for c in cuts)
    cut_batches = [make_batch(b, device) for b in batches(cuts, args.max_duration)]

    start = time.perf_counter()
    encoded = [decode.encode_batch(model, b) for b in cut_batches]
    encoder_seconds = time.perf_counter() - start

    methods = {}
    method_names = list(filter(None, args.methods.split(",")))
    if args.lm_arpa is not None:
        method_names.append("fast_beam_search_nbest_LG")
    for method in method_names:
        params.decoding_method = method
        graph, word_table = decode.get_decoding_graph(params, sp, device)
        start = time.perf_counter()
        for b, (enc, enc_lens) in zip(cut_batches, encoded):
            texts = b["supervisions"]["text"]
            decode.search_batch(params, model, sp, enc, enc_lens, texts, word_table, graph)
        search = time.perf_counter() - start
        methods[method] = {
            "search_rtf": search / audio_seconds,
            "rtf": (search + encoder_seconds) / audio_seconds,
        }

    start = time.perf_counter()
    features = {c.id: compute_fbank(c.load_audio()[0], c.sampling_rate) for c in cuts}
    feature_seconds = time.perf_counter() - start

    streaming = {}
    params.num_decode_streams = args.num_decode_streams
    params.beam, params.max_contexts, params.max_states = 4.0, 4, 32
    for method in filter(None, args.streaming_methods.split(",")):
        params.decoding_method = method
        graph = None
        if method == "fast_beam_search":
            from icefall.decoding import trivial_graph

            graph = trivial_graph(params.vocab_size - 1, device=device)
        start = time.perf_counter()
        streams = (
            streaming_decode.make_stream(params, model, cut_id, feats.to(device), graph)
            for cut_id, feats in features.items()
        )
        streaming_decode.decode_streams(params, model, streams)
        seconds = time.perf_counter() - start + feature_seconds
        streaming[method] = {
            "rtf": seconds / audio_seconds,
            "streams_per_core": audio_seconds / seconds / args.num_threads,
        }

    print(
        json.dumps(
            {
                "device": str(device),
                "num_threads": args.num_threads,
                "random_weights": random_weights,
                "num_parameters": sum(p.numel() for p in model.parameters()),
                "test_set": args.test_set,
                "num_utterances": len(cuts),
                "audio_seconds": round(audio_seconds, 2),
                "encoder_rtf": encoder_seconds / audio_seconds,
                "feature_rtf": feature_seconds / audio_seconds,
                "methods": methods,
                "streaming": {"num_decode_streams": args.num_decode_streams, **streaming},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
