#!/usr/bin/env python3
"""Decode the test sets with a trained model (simulated streaming: whole utterances through the
chunk-masked encoder), like icefall's ``decode.py``.

Usage, from ``egs/<corpus>/ASR``::

  ./pruned_transducer_stateless7_streaming/decode.py --epoch 30 --avg 9 \\
    --exp-dir pruned_transducer_stateless7_streaming/exp --max-duration 600 \\
    --decode-chunk-len 32 --decoding-method greedy_search

  # the other methods
  --decoding-method beam_search --beam-size 4
  --decoding-method modified_beam_search --beam-size 4
  --decoding-method fast_beam_search --beam 20 --max-contexts 8 --max-states 64
  --decoding-method fast_beam_search_nbest --num-paths 200 --nbest-scale 0.5
  --decoding-method fast_beam_search_nbest_LG --ngram-lm-scale 0.01 --lang-dir data/lang_bpe_500
  --decoding-method fast_beam_search_nbest_oracle

For every test set writes ``recogs-*``, ``errs-*`` and ``wer-summary-*`` to
``exp_dir/<decoding-method>/``; the suffix names the checkpoint (epoch/iter, avg), chunk size
and search settings. ``fast_beam_search_nbest_LG`` uses ``<lang-dir>/LG.pt`` if present
(``python -m icefall.decoding.fsa --lang-dir <lang-dir> --arpa <lm.arpa>`` writes it once),
else compiles LG from ``--lm-arpa`` (words spelled with the BPE model, or
``<lang-dir>/lexicon.txt`` when it exists). A word LM for a small corpus::

  python -m icefall.decoding.arpa --order 3 --text data/lang_bpe_256/transcript_words.txt \
      --out data/lm/G_3_gram.arpa
"""

import argparse
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import sentencepiece as spm
import torch
from tqdm import tqdm
from train import add_model_arguments, apply_corpus_defaults, get_params, get_transducer_model

from icefall.data.datamodule import AsrDataModule
from icefall.decoding import (
    beam_search,
    fast_beam_search_nbest,
    fast_beam_search_nbest_LG,
    fast_beam_search_nbest_oracle,
    fast_beam_search_one_best,
    greedy_search,
    greedy_search_batch,
    modified_beam_search,
    trivial_graph,
)
from icefall.decoding.fsa import Fsa, load_or_compile_LG
from icefall.export.model_loading import load_model_weights
from icefall.utils import (
    AttributeDict,
    setup_logger,
    store_transcripts,
    str2bool,
    write_error_stats,
)

LOG_EPS = math.log(1e-10)
# Frames of LOG_EPS appended to every utterance so its last frames get a full right chunk.
TAIL_PAD_FRAMES = 30

DECODING_METHODS = (
    "greedy_search",
    "beam_search",
    "modified_beam_search",
    "fast_beam_search",
    "fast_beam_search_nbest",
    "fast_beam_search_nbest_LG",
    "fast_beam_search_nbest_oracle",
)


def add_decoding_arguments(parser: argparse.ArgumentParser, epoch: int, avg: int) -> None:
    """Checkpoint, lang and search flags shared by decode.py and streaming_decode.py."""
    parser.add_argument("--epoch", type=int, default=epoch, help="Use epoch-{epoch}.pt.")
    parser.add_argument(
        "--iter",
        type=int,
        default=0,
        help="If positive, use checkpoint-{iter}.pt (and older ones) instead of --epoch.",
    )
    parser.add_argument(
        "--avg",
        type=int,
        default=avg,
        help="Number of checkpoints to average: epochs epoch-avg+1..epoch, or the avg newest "
        "checkpoint-*.pt up to --iter.",
    )
    parser.add_argument(
        "--use-averaged-model",
        type=str2bool,
        default=True,
        help="Use the running averaged model stored in the checkpoints over the interval "
        "(epoch-avg, epoch] (needs epoch-{epoch-avg}.pt) instead of averaging checkpoints.",
    )
    parser.add_argument(
        "--exp-dir",
        type=str,
        default="pruned_transducer_stateless7_streaming/exp",
        help="The experiment dir (checkpoints; results go to a subfolder).",
    )
    parser.add_argument(
        "--bpe-model",
        type=str,
        default="data/lang_bpe_500/bpe.model",
        help="Path to the BPE model.",
    )
    parser.add_argument(
        "--lang-dir",
        type=Path,
        default=Path("data/lang_bpe_500"),
        help="The lang dir (LG.pt, words.txt or lexicon.txt for fast_beam_search_nbest_LG).",
    )
    parser.add_argument(
        "--lm-arpa",
        type=Path,
        default=Path("data/lm/G_3_gram.arpa"),
        help="Word n-gram LM (ARPA) compiled into LG when <lang-dir>/LG.pt does not exist.",
    )
    parser.add_argument(
        "--decoding-method",
        type=str,
        default="greedy_search",
        help="The search to use (the list is in the usage above).",
    )
    parser.add_argument("--beam", type=float, default=20.0, help="fast_beam_search beam.")
    parser.add_argument(
        "--max-contexts", type=int, default=8, help="fast_beam_search contexts per frame."
    )
    parser.add_argument(
        "--max-states", type=int, default=64, help="fast_beam_search states per frame."
    )
    parser.add_argument(
        "--context-size", type=int, default=2, help="Decoder context (1 = bigram-free)."
    )


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_decoding_arguments(parser, epoch=30, avg=9)
    parser.add_argument(
        "--beam-size", type=int, default=4, help="Beam size of beam_search/modified_beam_search."
    )
    parser.add_argument(
        "--ngram-lm-scale",
        type=float,
        default=0.01,
        help="Scale of the LG graph scores in fast_beam_search_nbest_LG.",
    )
    parser.add_argument(
        "--max-sym-per-frame", type=int, default=1, help="Max symbols per frame (greedy)."
    )
    parser.add_argument(
        "--num-paths", type=int, default=200, help="Paths sampled by the *_nbest* methods."
    )
    parser.add_argument(
        "--nbest-scale",
        type=float,
        default=0.5,
        help="Scale of the lattice scores before sampling paths (smaller = more diverse).",
    )
    add_model_arguments(parser)
    return parser


def checkpoint_suffix(params: AttributeDict) -> str:
    if params.iter > 0:
        return f"iter-{params.iter}-avg-{params.avg}"
    return f"epoch-{params.epoch}-avg-{params.avg}"


def get_suffix(params: AttributeDict) -> str:
    """icefall's result-file suffix: checkpoint, chunk size and search settings."""
    suffix = checkpoint_suffix(params) + f"-streaming-chunk-size-{params.decode_chunk_len}"
    method = params.decoding_method
    if "fast_beam_search" in method:
        suffix += f"-beam-{params.beam}-max-contexts-{params.max_contexts}"
        suffix += f"-max-states-{params.max_states}"
        if "nbest" in method:
            suffix += f"-nbest-scale-{params.nbest_scale}-num-paths-{params.num_paths}"
            if "LG" in method:
                suffix += f"-ngram-lm-scale-{params.ngram_lm_scale}"
    elif "beam_search" in method:
        suffix += f"-{method}-beam-size-{params.beam_size}"
    else:
        suffix += f"-context-{params.context_size}-max-sym-per-frame-{params.max_sym_per_frame}"
    if params.use_averaged_model:
        suffix += "-use-averaged-model"
    return suffix


def log_device(device: torch.device) -> None:
    logging.info(f"Device: {device}")


def load_model(
    params: AttributeDict, device: torch.device
) -> Tuple[torch.nn.Module, spm.SentencePieceProcessor]:
    """BPE model (sets blank_id/unk_id/vocab_size) and the model with the selected weights."""
    if not Path(params.bpe_model).is_file():
        raise FileNotFoundError(
            f"BPE model {params.bpe_model} not found: run prepare.sh or pass --bpe-model"
        )
    sp = spm.SentencePieceProcessor()
    sp.load(str(params.bpe_model))
    params.blank_id = sp.piece_to_id("<blk>")
    params.unk_id = sp.piece_to_id("<unk>")
    params.vocab_size = sp.get_piece_size()

    model = get_transducer_model(params)
    if model.encoder.decode_chunk_size != params.decode_chunk_len // 2:
        raise ValueError(
            f"encoder decode_chunk_size {model.encoder.decode_chunk_size} != "
            f"--decode-chunk-len {params.decode_chunk_len} // 2"
        )
    load_model_weights(
        model,
        params.exp_dir,
        epoch=params.epoch,
        iteration=params.iter,
        avg=params.avg,
        use_averaged_model=params.use_averaged_model,
    )
    model.to(device)
    model.eval()
    model.unk_id = params.unk_id
    num_params = sum(p.numel() for p in model.parameters())
    logging.info(f"Number of model parameters: {num_params}")
    return model, sp


def parse_decoding_args(
    parser: argparse.ArgumentParser, argv: Optional[List[str]]
) -> Tuple[argparse.Namespace, AttributeDict]:
    """Add the data-module flags to ``parser``, apply the corpus defaults and parse ``argv``.

    Returns:
      the parsed flags (``exp_dir`` as a Path) and ``get_params()`` updated with them.
    """
    AsrDataModule.add_arguments(parser)
    apply_corpus_defaults(parser, argv)
    args = parser.parse_args(argv)
    args.exp_dir = Path(args.exp_dir)

    params = get_params()
    params.update(vars(args))
    return args, params


def start_decoding(
    params: AttributeDict,
) -> Tuple[torch.device, torch.nn.Module, spm.SentencePieceProcessor]:
    """Log to ``{res_dir}/log-decode-{suffix}``, pick the device and load BPE model and model."""
    setup_logger(f"{params.res_dir}/log-decode-{params.suffix}")
    logging.info("Decoding started")

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    log_device(device)
    model, sp = load_model(params, device)
    return device, model, sp


def result_key(params: AttributeDict) -> str:
    """icefall's key of the results dict (one setting per run)."""
    method = params.decoding_method
    if method == "greedy_search":
        return "greedy_search"
    if "fast_beam_search" in method:
        key = f"beam_{params.beam}_max_contexts_{params.max_contexts}"
        key += f"_max_states_{params.max_states}"
        if "nbest" in method:
            key += f"_num_paths_{params.num_paths}_nbest_scale_{params.nbest_scale}"
            if "LG" in method:
                key += f"_ngram_lm_scale_{params.ngram_lm_scale}"
        return key
    return f"beam_size_{params.beam_size}"


def encode_batch(model: torch.nn.Module, batch: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    """Encoder output of a batch: features right-padded with 30 LOG_EPS frames, chunk-masked
    (simulated streaming) encoder. Returns (encoder_out (N, T, C), encoder_out_lens (N,))."""
    device = next(model.parameters()).device
    feature = batch["inputs"].to(device)
    assert feature.ndim == 3, feature.shape
    feature_lens = batch["supervisions"]["num_frames"].to(device) + TAIL_PAD_FRAMES
    feature = torch.nn.functional.pad(feature, (0, 0, 0, TAIL_PAD_FRAMES), value=LOG_EPS)
    return model.encoder(feature, feature_lens)


def search_batch(
    params: AttributeDict,
    model: torch.nn.Module,
    sp: spm.SentencePieceProcessor,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    ref_texts: List[str],
    word_table: Optional[Dict[int, str]] = None,
    decoding_graph: Optional[Fsa] = None,
) -> Dict[str, List[List[str]]]:
    """Run ``params.decoding_method`` on encoder output; returns ``{key: [hyp words]}``."""
    method = params.decoding_method
    fast = dict(beam=params.beam, max_states=params.max_states, max_contexts=params.max_contexts)
    nbest = dict(num_paths=params.num_paths, nbest_scale=params.nbest_scale)
    if method == "greedy_search" and params.max_sym_per_frame == 1:
        hyp_tokens = greedy_search_batch(model, encoder_out, encoder_out_lens)
    elif method == "greedy_search":
        hyp_tokens = [
            greedy_search(model, encoder_out[i : i + 1, :n], params.max_sym_per_frame)
            for i, n in enumerate(encoder_out_lens.tolist())
        ]
    elif method == "beam_search":
        hyp_tokens = [
            beam_search(model, encoder_out[i : i + 1, :n], beam=params.beam_size)
            for i, n in enumerate(encoder_out_lens.tolist())
        ]
    elif method == "modified_beam_search":
        hyp_tokens = modified_beam_search(
            model, encoder_out, encoder_out_lens, beam=params.beam_size
        )
    elif method == "fast_beam_search":
        hyp_tokens = fast_beam_search_one_best(
            model, decoding_graph, encoder_out, encoder_out_lens, **fast
        )
    elif method == "fast_beam_search_nbest":
        hyp_tokens = fast_beam_search_nbest(
            model, decoding_graph, encoder_out, encoder_out_lens, **fast, **nbest
        )
    elif method == "fast_beam_search_nbest_oracle":
        hyp_tokens = fast_beam_search_nbest_oracle(
            model,
            decoding_graph,
            encoder_out,
            encoder_out_lens,
            **fast,
            **nbest,
            ref_texts=sp.encode(list(ref_texts)),
        )
    elif method == "fast_beam_search_nbest_LG":
        outputs = fast_beam_search_nbest_LG(
            model, decoding_graph, encoder_out, encoder_out_lens, **fast, **nbest
        )
        if word_table is None:  # a token LG: its outputs are token ids
            return {result_key(params): [sp.decode(hyp).split() for hyp in outputs]}
        return {result_key(params): [[word_table[i] for i in hyp] for hyp in outputs]}
    else:
        raise ValueError(f"unsupported decoding method {method!r}")
    return {result_key(params): [sp.decode(hyp).split() for hyp in hyp_tokens]}


def decode_one_batch(
    params: AttributeDict,
    model: torch.nn.Module,
    sp: spm.SentencePieceProcessor,
    batch: dict,
    word_table: Optional[Dict[int, str]] = None,
    decoding_graph: Optional[Fsa] = None,
) -> Dict[str, List[List[str]]]:
    """Decode one batch; returns ``{key: [hyp words per utterance]}``."""
    encoder_out, encoder_out_lens = encode_batch(model, batch)
    texts = list(batch["supervisions"]["text"])
    return search_batch(
        params, model, sp, encoder_out, encoder_out_lens, texts, word_table, decoding_graph
    )


def decode_dataset(
    dl: torch.utils.data.DataLoader,
    params: AttributeDict,
    model: torch.nn.Module,
    sp: spm.SentencePieceProcessor,
    word_table: Optional[Dict[int, str]] = None,
    decoding_graph: Optional[Fsa] = None,
) -> Dict[str, List[Tuple[str, List[str], List[str]]]]:
    """Decode a whole test set; returns ``{key: [(cut_id, ref_words, hyp_words), ...]}``."""
    results: Dict[str, list] = defaultdict(list)
    for batch in tqdm(dl, desc="batches", leave=False):
        texts = batch["supervisions"]["text"]
        cut_ids = [cut.id for cut in batch["supervisions"]["cut"]]
        hyps_dict = decode_one_batch(params, model, sp, batch, word_table, decoding_graph)
        for name, hyps in hyps_dict.items():
            assert len(hyps) == len(texts)
            for cut_id, hyp_words, ref_text in zip(cut_ids, hyps, texts):
                results[name].append((cut_id, ref_text.split(), hyp_words))
    return dict(results)


def save_results(
    params: AttributeDict,
    test_set_name: str,
    results_dict: Dict[str, List[Tuple[str, List[str], List[str]]]],
) -> Dict[str, float]:
    """Write recogs-*, errs-* and wer-summary-* to ``params.res_dir``; log the WER table."""
    res_dir = Path(params.res_dir)
    res_dir.mkdir(parents=True, exist_ok=True)
    test_set_wers = {}
    for key, results in results_dict.items():
        recog_path = res_dir / f"recogs-{test_set_name}-{key}-{params.suffix}.txt"
        results = sorted(results)
        store_transcripts(filename=recog_path, texts=results)
        logging.info(f"The transcripts are stored in {recog_path}")
        errs_filename = res_dir / f"errs-{test_set_name}-{key}-{params.suffix}.txt"
        with open(errs_filename, "w") as f:
            wer = write_error_stats(f, f"{test_set_name}-{key}", results, enable_log=True)
            test_set_wers[key] = wer
        logging.info(f"Wrote detailed error stats to {errs_filename}")

    ranked = sorted(test_set_wers.items(), key=lambda x: x[1])
    errs_info = res_dir / f"wer-summary-{test_set_name}-{key}-{params.suffix}.txt"
    with open(errs_info, "w") as f:
        print("settings\tWER", file=f)
        for key, val in ranked:
            print(f"{key}\t{val}", file=f)
    s = f"\nFor {test_set_name}, WER of different settings are:\n"
    note = f"\tbest for {test_set_name}"
    for key, val in ranked:
        s += f"{key}\t{val}{note}\n"
        note = ""
    logging.info(s)
    return test_set_wers


def get_decoding_graph(
    params: AttributeDict, sp: spm.SentencePieceProcessor, device: torch.device
) -> Tuple[Optional[Fsa], Optional[Dict[int, str]]]:
    """The trivial graph, or LG (scores × ``--ngram-lm-scale``) with its id -> word table
    (None when the LG outputs tokens)."""
    method = params.decoding_method
    if "fast_beam_search" not in method:
        return None, None
    if method != "fast_beam_search_nbest_LG":
        return trivial_graph(params.vocab_size - 1, device=device), None
    lg, words = load_or_compile_LG(params.lang_dir, params.lm_arpa, sp, params.vocab_size)
    logging.info(f"LG: {lg.num_states} states, {lg.num_arcs} arcs")
    word_table = None if words is None else {i: w for w, i in words.items()}
    return lg.scaled(params.ngram_lm_scale).to(device), word_table


@torch.no_grad()
def main(argv: Optional[List[str]] = None) -> None:
    args, params = parse_decoding_args(get_parser(), argv)
    if params.decoding_method not in DECODING_METHODS:
        raise ValueError(
            f"unknown --decoding-method {params.decoding_method}; "
            f"choose one of {', '.join(DECODING_METHODS)}"
        )
    params.res_dir = params.exp_dir / params.decoding_method
    params.suffix = get_suffix(params)
    device, model, sp = start_decoding(params)
    decoding_graph, word_table = get_decoding_graph(params, sp, device)
    logging.info(params)

    data = AsrDataModule(args)
    for test_set, cuts in data.test_cuts().items():
        dl = data.test_dataloaders(cuts)
        results = decode_dataset(dl, params, model, sp, word_table, decoding_graph)
        save_results(params, test_set, results)
    logging.info("Done!")


if __name__ == "__main__":
    main()
