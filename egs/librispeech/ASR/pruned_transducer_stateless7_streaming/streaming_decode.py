#!/usr/bin/env python3
"""Real chunk-wise streaming decoding of the test sets (icefall's ``streaming_decode.py``).

Features are computed on the fly with kaldi-native-fbank (the training fbank settings); every
step feeds ``--decode-chunk-len`` new frames (+7 overlap frames) of up to
``--num-decode-streams`` utterances through ``model.encoder.streaming_forward`` with each
stream's cached states, then advances each stream's search. Finished streams leave the batch
and new ones join. Results go to ``exp_dir/streaming/<method>/`` as ``recogs-*``, ``errs-*``,
``wer-summary-*`` (the files of ``decode.py``).

Usage, from ``egs/<corpus>/ASR``::

  ./pruned_transducer_stateless7_streaming/streaming_decode.py \\
    --epoch 30 --avg 9 --exp-dir pruned_transducer_stateless7_streaming/exp \\
    --decode-chunk-len 32 --num-decode-streams 100 --decoding-method greedy_search

Decoding methods: greedy_search, modified_beam_search (``--num-active-paths``),
fast_beam_search (``--beam --max-contexts --max-states``).
"""

import argparse
import logging
import math
from typing import Dict, Iterable, List, Optional, Tuple

import sentencepiece as spm
import torch
from decode import (
    add_decoding_arguments,
    checkpoint_suffix,
    parse_decoding_args,
    save_results,
    start_decoding,
)
from decode_stream import DecodeStream
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm
from train import add_model_arguments
from zipformer import stack_states, unstack_states

from icefall.data.datamodule import AsrDataModule
from icefall.decoding.fast_beam_search import FastBeamSearchConfig
from icefall.decoding.fsa import Fsa, trivial_graph
from icefall.decoding.streaming import STREAMING_METHODS, streaming_search
from icefall.features import compute_fbank
from icefall.utils import AttributeDict

LOG_EPS = math.log(1e-10)
# Shortest chunk streaming_forward accepts: 7 overlap frames + 16 frames, so that every stack
# (downsampling up to 8) sees at least one frame (icefall pads the tail chunk to this).
MIN_CHUNK_FRAMES = 23


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_decoding_arguments(parser, epoch=28, avg=15)
    parser.set_defaults(beam=4.0, max_contexts=4, max_states=32)
    parser.add_argument(
        "--num_active_paths",
        "--num-active-paths",
        dest="num_active_paths",
        type=int,
        default=4,
        help="Number of active paths of modified_beam_search.",
    )
    parser.add_argument(
        "--num-decode-streams",
        type=int,
        default=2000,
        help="Number of utterances decoded in parallel (one batch).",
    )
    add_model_arguments(parser)
    return parser


def _streaming_forward(
    model: torch.nn.Module, chunks: List[torch.Tensor], lengths: List[int], states: List
) -> Tuple[torch.Tensor, torch.Tensor, List[List[torch.Tensor]]]:
    """Run one batch of equally long chunks through ``streaming_forward``."""
    features = pad_sequence(chunks, batch_first=True, padding_value=LOG_EPS)
    x_lens = torch.tensor(lengths, device=features.device)
    encoder_out, encoder_out_lens, new_states = model.encoder.streaming_forward(
        x=features, x_lens=x_lens, states=stack_states(states)
    )
    return encoder_out, encoder_out_lens, unstack_states(new_states)


def decode_one_chunk(
    params: AttributeDict, model: torch.nn.Module, decode_streams: List[DecodeStream]
) -> List[int]:
    """Advance every stream by one chunk; return the indexes of the streams now finished.

    Chunks of different lengths (only the last chunk of an utterance is shorter) go through the
    encoder in separate batches, so every stream's result does not depend on which other
    streams share its batch.
    """
    device = next(model.parameters()).device
    groups: Dict[int, List[Tuple[int, torch.Tensor]]] = {}
    for i, stream in enumerate(decode_streams):
        frames, length = stream.get_feature_frames(params.decode_chunk_len)
        if length < MIN_CHUNK_FRAMES:
            frames = torch.nn.functional.pad(
                frames, (0, 0, 0, MIN_CHUNK_FRAMES - length), value=LOG_EPS
            )
            length = MIN_CHUNK_FRAMES
        groups.setdefault(length, []).append((i, frames.to(device)))

    graph_config = FastBeamSearchConfig(
        beam=params.beam, max_states=params.max_states, max_contexts=params.max_contexts
    )
    for length, members in groups.items():
        indexes = [i for i, _ in members]
        encoder_out, encoder_out_lens, new_states = _streaming_forward(
            model,
            [frames for _, frames in members],
            [length] * len(members),
            [decode_streams[i].states for i in indexes],
        )
        streaming_search(
            params.decoding_method,
            model,
            encoder_out,
            [decode_streams[i].search for i in indexes],
            encoder_out_lens=encoder_out_lens,
            num_active_paths=params.num_active_paths,
            fast_beam_config=graph_config,
        )
        for i, states, n in zip(indexes, new_states, encoder_out_lens.tolist()):
            decode_streams[i].states = states
            decode_streams[i].done_frames += n
    return [i for i, stream in enumerate(decode_streams) if stream.done]


def decode_streams(
    params: AttributeDict,
    model: torch.nn.Module,
    new_streams: Iterable[DecodeStream],
    total: Optional[int] = None,
) -> List[DecodeStream]:
    """Decode streams, at most ``params.num_decode_streams`` at a time.

    New streams join as soon as finished ones leave. Returns the finished streams in the order
    they finished.
    """
    if params.num_decode_streams < 1:
        raise ValueError(f"--num-decode-streams must be >= 1, got {params.num_decode_streams}")
    active: List[DecodeStream] = []
    finished: List[DecodeStream] = []
    progress = tqdm(total=total, desc="streams", disable=total is None, leave=False)

    def step() -> None:
        done = decode_one_chunk(params, model, active)
        for i in sorted(done, reverse=True):
            finished.append(active.pop(i))
            progress.update(1)

    for stream in new_streams:
        active.append(stream)
        while len(active) >= params.num_decode_streams:
            step()
    while active:
        step()
    progress.close()
    return finished


def make_stream(
    params: AttributeDict,
    model: torch.nn.Module,
    cut_id: str,
    features: torch.Tensor,
    decoding_graph: Optional[Fsa],
) -> DecodeStream:
    """A stream over (T, 80) features with zero initial states."""
    device = next(model.parameters()).device
    stream = DecodeStream(
        params=params,
        cut_id=cut_id,
        initial_states=model.encoder.get_init_state(device=device),
        model=model,
        decoding_graph=decoding_graph,
        device=device,
    )
    stream.set_features(features, tail_pad_len=params.decode_chunk_len)
    return stream


def decode_dataset(
    cuts,
    params: AttributeDict,
    model: torch.nn.Module,
    sp: spm.SentencePieceProcessor,
    decoding_graph: Optional[Fsa] = None,
) -> Dict[str, List[Tuple[str, List[str], List[str]]]]:
    """Decode every cut of ``cuts`` (audio read from the cut, fbank computed here).

    Returns:
      ``{key: [(cut_id, ref_words, hyp_words), ...]}`` with one key naming the settings.
    """
    texts: Dict[str, str] = {}
    skipped: Dict[str, str] = {}

    def streams() -> Iterable[DecodeStream]:
        for cut in cuts:
            try:
                audio = cut.load_audio()
                if audio.ndim != 2 or audio.shape[0] != 1:
                    raise ValueError(f"expected mono audio, got shape {audio.shape}")
                features = compute_fbank(audio[0], sample_rate=cut.sampling_rate)
            except Exception as e:  # unreadable or unusable audio: count it and go on
                skipped[cut.id] = str(e)
                logging.warning(f"Skipping cut {cut.id}: {e}")
                continue
            texts[cut.id] = " ".join(s.text or "" for s in cut.supervisions)
            yield make_stream(params, model, cut.id, features, decoding_graph)

    finished = decode_streams(params, model, streams(), total=len(cuts))
    results = [
        (s.id, texts[s.id].split(), sp.decode(s.decoding_result()).split()) for s in finished
    ]
    if skipped:
        logging.warning(f"{len(skipped)} cut(s) skipped because their audio was unusable")
    if params.decoding_method == "greedy_search":
        key = "greedy_search"
    elif params.decoding_method == "fast_beam_search":
        key = (
            f"beam_{params.beam}_max_contexts_{params.max_contexts}_max_states_{params.max_states}"
        )
    else:
        key = f"num_active_paths_{params.num_active_paths}"
    return {key: results}


def get_suffix(params: AttributeDict) -> str:
    suffix = checkpoint_suffix(params) + f"-streaming-chunk-size-{params.decode_chunk_len}"
    if params.decoding_method == "fast_beam_search":
        suffix += f"-beam-{params.beam}-max-contexts-{params.max_contexts}"
        suffix += f"-max-states-{params.max_states}"
    elif params.decoding_method == "modified_beam_search":
        suffix += f"-num-active-paths-{params.num_active_paths}"
    else:
        suffix += f"-context-{params.context_size}"
    if params.use_averaged_model:
        suffix += "-use-averaged-model"
    return suffix


@torch.no_grad()
def main(argv: Optional[List[str]] = None) -> None:
    args, params = parse_decoding_args(get_parser(), argv)
    if params.decoding_method not in STREAMING_METHODS:
        raise ValueError(
            f"--decoding-method {params.decoding_method} is not supported for streaming; "
            f"use one of {', '.join(STREAMING_METHODS)}"
        )
    params.res_dir = params.exp_dir / "streaming" / params.decoding_method
    params.suffix = get_suffix(params)
    device, model, sp = start_decoding(params)
    decoding_graph = None
    if params.decoding_method == "fast_beam_search":
        decoding_graph = trivial_graph(params.vocab_size - 1, device=device)
    logging.info(params)

    data = AsrDataModule(args)
    for test_set, cuts in data.test_cuts().items():
        results = decode_dataset(cuts, params, model, sp, decoding_graph)
        save_results(params, test_set, results)
    logging.info("Done!")


if __name__ == "__main__":
    main()
