#!/usr/bin/env python3
"""Train the streaming Zipformer transducer (icefall's ``pruned_transducer_stateless7_streaming``).

Usage, from ``egs/<corpus>/ASR``::

  # LibriSpeech, 4 GPUs, fp16
  ./pruned_transducer_stateless7_streaming/train.py --world-size 4 --num-epochs 30 \\
    --use-fp16 1 --exp-dir pruned_transducer_stateless7_streaming/exp --max-duration 550

  # several machines: the same flags under torchrun (no --world-size)
  torchrun --nnodes 2 --nproc-per-node 8 ... ./pruned_transducer_stateless7_streaming/train.py ...

  # the tiny corpus (in egs/tiny/ASR the tiny model and training defaults apply by themselves)
  ./pruned_transducer_stateless7_streaming/train.py --corpus tiny

Resume with ``--start-epoch N`` (loads ``exp_dir/epoch-{N-1}.pt``) or ``--start-batch B`` (loads
``exp_dir/checkpoint-B.pt`` with the sampler position and the random number generator states;
on CPU with ``--num-workers 0`` the resumed run ends with exactly the parameters of an
uninterrupted run).

Corpus presets: :data:`CORPUS_DEFAULTS` holds, per corpus, the defaults that differ from
icefall's (the tiny model and schedule). :func:`apply_corpus_defaults` installs them into any
parser (decode/export scripts call it after adding their arguments); explicit flags still win.
"""

import argparse
import contextlib
import copy
import ctypes
import logging
import math
import os
import random
import sys
import time
import uuid
import warnings
from pathlib import Path
from shutil import copyfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from decoder import Decoder
from joiner import Joiner
from model import Transducer
from optim import Eden, LRScheduler, ScaledAdam
from scaling import set_batch_count
from torch.nn.parallel import DistributedDataParallel as DDP
from zipformer import Zipformer

from icefall.checkpoint import load_checkpoint, remove_checkpoints, update_averaged_model
from icefall.checkpoint import save_checkpoint as save_checkpoint_impl
from icefall.checkpoint import (
    save_checkpoint_with_global_batch_idx as save_checkpoint_with_global_batch_idx_impl,
)
from icefall.data.corpora import detect_corpus
from icefall.data.datamodule import AsrDataModule
from icefall.data.filters import filter_cuts
from icefall.dist import cleanup_dist, get_local_rank, get_rank, get_world_size, setup_dist
from icefall.env import get_env_info
from icefall.err import raise_grad_scale_is_too_small_error
from icefall.hooks import register_inf_check_hooks
from icefall.utils import (
    AttributeDict,
    MetricsTracker,
    fix_random_seed,
    get_autocast_dtype,
    setup_logger,
    str2bool,
)

LRSchedulerType = LRScheduler
FRAME_SHIFT_S = 0.01

# Defaults that differ from icefall's, per corpus (keys are argparse dests). "librispeech" keeps
# icefall's defaults. The tiny model has 2.6 M parameters; one epoch of the tiny corpus (9.5 h of
# speed-perturbed audio) takes about 7 minutes on 2 otherwise idle CPU cores (about 80 s of
# audio per second with 2 torch threads and one data-loader worker).
#
# Why the tiny schedule differs: a transducer first sits on a plateau (blank plus a text-only
# guess, pruned loss about 1.1 per frame) until the encoder finds the alignment, which takes
# about 1000-1200 updates here. 30 s batches get there within one epoch (valid loss 1.34 after
# epoch 1, against 1.56 with 60 s batches) but train at about 62 instead of 80 s of audio per
# second; the preset keeps 60 s batches so that run.sh stays within 30 minutes. It runs the
# model's warm-up schedules (layer drop, balancers, bypass clamps) 40x faster
# (--batch-count-scale) and ramps the pruned loss in over 150 batches. Measured, and slower to
# leave the plateau: base-lr 0.1 and 0.025 (vs 0.05), --scalar-lr-scale 1.0 (vs 0.1),
# SpecAugment and noise mixing on (the training set already has 30 % noisy utterances), an
# auxiliary CTC loss (--use-ctc 1); --scalar-lr-scale 0.5 made no difference.
CORPUS_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "librispeech": {},
    "tiny": {
        # model
        "num_encoder_layers": "1,1,1,1,1",
        "feedforward_dims": "256,384,384,384,256",
        "nhead": "4,4,4,4,4",
        "encoder_dims": "128,128,128,128,128",
        "attention_dims": "64,64,64,64,64",
        "encoder_unmasked_dims": "96,96,96,96,96",
        "cnn_module_kernels": "31,31,31,31,31",
        "decoder_dim": 128,
        "joiner_dim": 128,
        # data and lang dir
        "bpe_model": "data/lang_bpe_256/bpe.model",
        "tokens": "data/lang_bpe_256/tokens.txt",
        "lang_dir": "data/lang_bpe_256",
        "max_duration": 60.0,
        "num_workers": 1,
        "num_threads": 2,
        "num_buckets": 10,
        "enable_spec_aug": False,
        "enable_musan": False,
        # schedule
        "num_epochs": 2,
        "base_lr": 0.05,
        "lr_batches": 1000,
        "lr_epochs": 3.0,
        "lr_warmup_batches": 100,
        "batch_count_scale": 40.0,
        "warm_step": 150,
        "save_every_n": 500,
        "keep_last_k": 5,
        "average_period": 20,
        "log_interval": 50,
        "valid_interval": 400,
        # decode/export scripts
        "epoch": 2,
        "avg": 1,
    },
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model flags of the recipe (names and defaults as icefall's)."""
    parser.add_argument(
        "--num-encoder-layers",
        type=str,
        default="2,4,3,2,4",
        help="Number of zipformer encoder layers, comma separated.",
    )
    parser.add_argument(
        "--feedforward-dims",
        type=str,
        default="1024,1024,2048,2048,1024",
        help="Feedforward dimension of the zipformer encoder layers, comma separated.",
    )
    parser.add_argument(
        "--nhead",
        type=str,
        default="8,8,8,8,8",
        help="Number of attention heads in the zipformer encoder layers.",
    )
    parser.add_argument(
        "--encoder-dims",
        type=str,
        default="384,384,384,384,384",
        help="Embedding dimension in the 2 blocks of zipformer encoder layers, comma separated",
    )
    parser.add_argument(
        "--attention-dims",
        type=str,
        default="192,192,192,192,192",
        help="Attention dimension in the 2 blocks of zipformer encoder layers, comma separated; "
        "not the same as embedding dimension.",
    )
    parser.add_argument(
        "--encoder-unmasked-dims",
        type=str,
        default="256,256,256,256,256",
        help="Unmasked dimensions in the encoders, relates to augmentation during training. "
        "Must be <= each of encoder_dims. Empirically, less than 256 seems to make performance "
        "worse.",
    )
    parser.add_argument(
        "--zipformer-downsampling-factors",
        type=str,
        default="1,2,4,8,2",
        help="Downsampling factor for each stack of encoder layers.",
    )
    parser.add_argument(
        "--cnn-module-kernels",
        type=str,
        default="31,31,31,31,31",
        help="Sizes of kernels in convolution modules",
    )
    parser.add_argument(
        "--decoder-dim",
        type=int,
        default=512,
        help="Embedding dimension in the decoder model.",
    )
    parser.add_argument(
        "--joiner-dim",
        type=int,
        default=512,
        help="Dimension used in the joiner model. Outputs from the encoder and decoder model "
        "are projected to this dimension before adding.",
    )
    parser.add_argument(
        "--short-chunk-size",
        type=int,
        default=50,
        help="Chunk length of dynamic training, the chunk size would be either max sequence "
        "length of current batch or uniformly sampled from (1, short_chunk_size).",
    )
    parser.add_argument(
        "--num-left-chunks",
        type=int,
        default=4,
        help="How many left context can be seen in chunks when calculating attention.",
    )
    parser.add_argument(
        "--decode-chunk-len",
        type=int,
        default=32,
        help="The chunk size for decoding (in frames before subsampling)",
    )
    parser.add_argument(
        "--use-ctc",
        type=str2bool,
        default=False,
        help="Add a CTC head on the encoder and train it with an auxiliary CTC loss (as in "
        "icefall's zipformer recipe). Adds ctc_output.* to the checkpoint; decode and export "
        "scripts need the same flag.",
    )


def get_parser() -> argparse.ArgumentParser:
    """Training flags (icefall's names and defaults) plus the model flags.

    The data flags come from :meth:`AsrDataModule.add_arguments`; :func:`get_args` adds them and
    applies the corpus presets.
    """
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--world-size",
        type=int,
        default=1,
        help="Number of processes (GPUs, or CPU processes with gloo) for DDP training.",
    )
    parser.add_argument(
        "--master-port",
        type=int,
        default=12354,
        help="Master port to use for DDP training.",
    )
    parser.add_argument(
        "--tensorboard",
        type=str2bool,
        default=True,
        help="Should various information be logged in tensorboard.",
    )
    parser.add_argument(
        "--num-epochs",
        type=int,
        default=30,
        help="Number of epochs to train.",
    )
    parser.add_argument(
        "--start-epoch",
        type=int,
        default=1,
        help="Resume training from this epoch. It should be positive. If larger than 1, it "
        "will load checkpoint from exp-dir/epoch-{start_epoch-1}.pt",
    )
    parser.add_argument(
        "--start-batch",
        type=int,
        default=0,
        help="If positive, --start-epoch is ignored and it loads the checkpoint from "
        "exp-dir/checkpoint-{start_batch}.pt",
    )
    parser.add_argument(
        "--exp-dir",
        type=str,
        default="pruned_transducer_stateless7_streaming/exp",
        help="The experiment dir. It specifies the directory where all training related files, "
        "e.g., checkpoints, log, etc, are saved",
    )
    parser.add_argument(
        "--bpe-model",
        type=str,
        default="data/lang_bpe_500/bpe.model",
        help="Path to the BPE model",
    )
    parser.add_argument("--base-lr", type=float, default=0.05, help="The base learning rate.")
    parser.add_argument(
        "--scalar-lr-scale",
        type=float,
        default=0.1,
        help="ScaledAdam's learning-rate factor for scalar parameters and for the updates of "
        "each tensor's overall scale (icefall's fixed 0.1).",
    )
    parser.add_argument(
        "--lr-batches",
        type=float,
        default=5000,
        help="Number of steps that affects how rapidly the learning rate decreases. We suggest "
        "not to change this.",
    )
    parser.add_argument(
        "--lr-epochs",
        type=float,
        default=3.5,
        help="Number of epochs that affects how rapidly the learning rate decreases.",
    )
    parser.add_argument(
        "--lr-warmup-batches",
        type=float,
        default=500.0,
        help="Eden's warm-up: the learning rate rises from half to full over this many batches.",
    )
    parser.add_argument(
        "--batch-count-scale",
        type=float,
        default=1.0,
        help="The encoder's warm-up schedules (layer drop, bypass and dropout ramps over about "
        "4000 batches) see batch_idx_train times this; > 1 completes them in short runs.",
    )
    parser.add_argument(
        "--context-size",
        type=int,
        default=2,
        help="The context size in the decoder. 1 means bigram; 2 means tri-gram",
    )
    parser.add_argument(
        "--prune-range",
        type=int,
        default=5,
        help="The prune range for rnnt loss, it means how many symbols(context) we are using "
        "to compute the loss",
    )
    parser.add_argument(
        "--lm-scale",
        type=float,
        default=0.25,
        help="The scale to smooth the loss with lm (output of prediction network) part.",
    )
    parser.add_argument(
        "--am-scale",
        type=float,
        default=0.0,
        help="The scale to smooth the loss with am (output of encoder network) part.",
    )
    parser.add_argument(
        "--simple-loss-scale",
        type=float,
        default=0.5,
        help="To get pruning ranges, we will calculate a simple version loss(joiner is just "
        "addition), this simple loss also uses for training (as a regularization item). We "
        "will scale the simple loss with this parameter before adding to the final loss.",
    )
    parser.add_argument(
        "--ctc-loss-scale",
        type=float,
        default=0.2,
        help="Scale of the CTC loss when --use-ctc is true.",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="The seed for random generators intended for reproducibility",
    )
    parser.add_argument(
        "--print-diagnostics",
        type=str2bool,
        default=False,
        help="Accumulate stats on activations, print them and exit.",
    )
    parser.add_argument(
        "--inf-check",
        type=str2bool,
        default=False,
        help="Add hooks to check for infinite module outputs and gradients.",
    )
    parser.add_argument(
        "--save-every-n",
        type=int,
        default=2000,
        help="Save checkpoint after processing this number of batches periodically. We save "
        "checkpoint to exp-dir/ whenever params.batch_idx_train % save_every_n == 0. The "
        "checkpoint filename has the form: f'exp-dir/checkpoint-{params.batch_idx_train}.pt'",
    )
    parser.add_argument(
        "--keep-last-k",
        type=int,
        default=30,
        help="Only keep this number of checkpoints on disk. For instance, if it is 3, there "
        "are only 3 checkpoints in the exp-dir with filenames `checkpoint-xxx.pt`. It does not "
        "affect checkpoints with name `epoch-xxx.pt`.",
    )
    parser.add_argument(
        "--average-period",
        type=int,
        default=200,
        help="Update the averaged model, namely `model_avg`, after processing this number of "
        "batches. `model_avg` is a separate version of model, in which each floating-point "
        "parameter is the average of all the parameters from the start of training.",
    )
    parser.add_argument(
        "--use-fp16",
        type=str2bool,
        default=False,
        help="Whether to use half precision training (CUDA, with a grad scaler).",
    )
    parser.add_argument(
        "--use-bf16",
        type=str2bool,
        default=False,
        help="Train under bfloat16 autocast (CPU or GPU; no grad scaler needed).",
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        default=0,
        help="torch intra-op threads per process; 0: all cores on CPU (divided among the "
        "processes), 1 on GPU.",
    )
    parser.add_argument(
        "--log-interval",
        type=int,
        default=50,
        help="Log a progress line every this many batches.",
    )
    parser.add_argument(
        "--valid-interval",
        type=int,
        default=None,
        help="Compute the validation loss every this many batches (also at the end of every "
        "epoch). Default: 3000, or 1600 when LibriSpeech trains without --full-libri.",
    )
    parser.add_argument(
        "--warm-step",
        type=int,
        default=2000,
        help="Batches over which the simple/pruned loss scales move to their final values.",
    )
    parser.add_argument(
        "--min-utt-duration",
        type=float,
        default=1.0,
        help="Training cuts shorter than this (seconds) are dropped (counted in the log).",
    )
    parser.add_argument(
        "--max-utt-duration",
        type=float,
        default=20.0,
        help="Training cuts longer than this (seconds) are dropped (counted in the log).",
    )
    add_model_arguments(parser)
    return parser


def _corpus_from_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str:
    """The corpus named by ``--corpus`` in ``argv``, else the parser's default, else the cwd's."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--corpus", type=str, default=None)
    known, _ = pre.parse_known_args(list(argv))
    if known.corpus is not None:
        return known.corpus
    default = parser.get_default("corpus")
    return default if default is not None else detect_corpus()


def apply_corpus_defaults(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
) -> str:
    """Install the corpus presets of :data:`CORPUS_DEFAULTS` as parser defaults.

    Call it after every ``add_argument`` (including ``AsrDataModule.add_arguments``) and before
    ``parse_args``. Only flags the parser has are touched, so decode/export scripts get the
    tiny model flags, ``--bpe-model``/``--tokens``/``--lang-dir`` and ``--epoch``/``--avg``
    defaults too. Explicit flags on the command line still win.

    Args:
      parser: the script's parser.
      argv: the command line (default ``sys.argv[1:]``); only ``--corpus`` is read from it.
    Returns:
      The corpus name (from ``--corpus``, else the ``egs/<corpus>/ASR`` folder, else
      ``librispeech``).
    """
    argv = sys.argv[1:] if argv is None else argv
    corpus = _corpus_from_argv(parser, argv)
    if corpus not in CORPUS_DEFAULTS:
        known = ", ".join(sorted(CORPUS_DEFAULTS))
        raise ValueError(f"unknown corpus {corpus!r}; known corpora: {known}")
    dests = {action.dest for action in parser._actions}
    parser.set_defaults(
        **{key: value for key, value in CORPUS_DEFAULTS[corpus].items() if key in dests}
    )
    return corpus


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the training command line (training, model and data flags, corpus presets)."""
    parser = get_parser()
    AsrDataModule.add_arguments(parser)
    apply_corpus_defaults(parser, argv)
    args = parser.parse_args(argv)
    args.exp_dir = Path(args.exp_dir)
    return args


def get_params() -> AttributeDict:
    """Fixed training parameters (icefall's ``get_params``); command-line values override them.

    - best_train_loss/best_valid_loss, best_train_epoch/best_valid_epoch: best losses so far
      and the epochs they were reached (``best-*-loss.pt`` are copies of those epochs).
    - batch_idx_train: batches trained so far over all epochs (drives every schedule).
    - log_interval, reset_interval, valid_interval: batches between progress lines, between
      resets of the running loss, between validations.
    - feature_dim, subsampling_factor: 80-dim fbank, 4x subsampling.
    - warm_step: batches over which the simple/pruned loss scales reach their final values.
    - num_skipped_batches: batches skipped because their loss was not finite.
    """
    return AttributeDict(
        {
            "best_train_loss": float("inf"),
            "best_valid_loss": float("inf"),
            "best_train_epoch": -1,
            "best_valid_epoch": -1,
            "batch_idx_train": 0,
            "log_interval": 50,
            "reset_interval": 200,
            "valid_interval": 3000,
            "feature_dim": 80,
            "subsampling_factor": 4,
            "warm_step": 2000,
            "num_skipped_batches": 0,
            "env_info": get_env_info(),
        }
    )


def _to_int_tuple(s: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in str(s).split(","))


def get_encoder_model(params: AttributeDict) -> nn.Module:
    """The streaming Zipformer encoder described by the model flags in ``params``."""
    return Zipformer(
        num_features=params.feature_dim,
        output_downsampling_factor=2,
        zipformer_downsampling_factors=_to_int_tuple(params.zipformer_downsampling_factors),
        encoder_dims=_to_int_tuple(params.encoder_dims),
        attention_dim=_to_int_tuple(params.attention_dims),
        encoder_unmasked_dims=_to_int_tuple(params.encoder_unmasked_dims),
        nhead=_to_int_tuple(params.nhead),
        feedforward_dim=_to_int_tuple(params.feedforward_dims),
        cnn_module_kernels=_to_int_tuple(params.cnn_module_kernels),
        num_encoder_layers=_to_int_tuple(params.num_encoder_layers),
        num_left_chunks=params.num_left_chunks,
        short_chunk_size=params.short_chunk_size,
        decode_chunk_size=params.decode_chunk_len // 2,
    )


def get_decoder_model(params: AttributeDict) -> nn.Module:
    """The stateless decoder (needs ``vocab_size``, ``decoder_dim``, ``blank_id``,
    ``context_size``)."""
    return Decoder(
        vocab_size=params.vocab_size,
        decoder_dim=params.decoder_dim,
        blank_id=params.blank_id,
        context_size=params.context_size,
    )


def get_joiner_model(params: AttributeDict) -> nn.Module:
    """The joiner; its encoder input dim is the last encoder stack's dim."""
    return Joiner(
        encoder_dim=_to_int_tuple(params.encoder_dims)[-1],
        decoder_dim=params.decoder_dim,
        joiner_dim=params.joiner_dim,
        vocab_size=params.vocab_size,
    )


def get_transducer_model(params: AttributeDict) -> nn.Module:
    """The whole model; ``state_dict`` names, order and shapes are icefall's."""
    return Transducer(
        encoder=get_encoder_model(params),
        decoder=get_decoder_model(params),
        joiner=get_joiner_model(params),
        encoder_dim=_to_int_tuple(params.encoder_dims)[-1],
        decoder_dim=params.decoder_dim,
        joiner_dim=params.joiner_dim,
        vocab_size=params.vocab_size,
        use_ctc=params.get("use_ctc", False),
    )


def get_optimizer_and_scheduler(
    params: AttributeDict, model: nn.Module
) -> Tuple[ScaledAdam, LRScheduler]:
    """ScaledAdam (``--base-lr``, ``--scalar-lr-scale``, clipping scale 2.0) and the Eden
    schedule (``--lr-batches``, ``--lr-epochs``, ``--lr-warmup-batches``) for ``model``."""
    optimizer = ScaledAdam(
        model.parameters(),
        lr=params.base_lr,
        clipping_scale=2.0,
        scalar_lr_scale=params.scalar_lr_scale,
        parameters_names=[[name for name, _ in model.named_parameters()]],
        show_dominant_parameters=False,
    )
    scheduler = Eden(
        optimizer, params.lr_batches, params.lr_epochs, warmup_batches=params.lr_warmup_batches
    )
    return optimizer, scheduler


# ---------------------------------------------------------------------------------------------
# Random number generator states (for exact resumption)


def _data_transforms(train_dl: Any) -> List[Any]:
    dataset = getattr(train_dl, "dataset", None)
    cut_transforms = getattr(dataset, "cut_transforms", None) or []
    input_transforms = getattr(dataset, "input_transforms", None) or []
    return list(cut_transforms) + list(input_transforms)


def get_rng_states(train_dl: Any = None) -> Dict[str, Any]:
    """The states of Python's ``random``, NumPy's and torch's (CPU and CUDA) generators, and of
    the private generators of ``train_dl``'s data transforms (lhotse's ``CutMix`` keeps one)."""
    states: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    transforms = _data_transforms(train_dl)
    states["data_transforms"] = {
        i: t.rng.getstate()
        for i, t in enumerate(transforms)
        if isinstance(getattr(t, "rng", None), random.Random)
    }
    return states


def set_rng_states(states: Dict[str, Any], train_dl: Any = None) -> None:
    """Restore generator states saved by :func:`get_rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        if len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
    transforms = _data_transforms(train_dl)
    for i, state in states.get("data_transforms", {}).items():
        if i < len(transforms) and hasattr(transforms[i], "rng"):
            transforms[i].rng = random.Random()
            transforms[i].rng.setstate(state)


def reseed_data_transforms(train_dl: Any, seed: int) -> None:
    """Give data transforms with a private generator (lhotse's ``CutMix``) a per-epoch seed, so
    that epochs differ and a run resumed at an epoch boundary matches an uninterrupted one."""
    for i, transform in enumerate(_data_transforms(train_dl)):
        if hasattr(transform, "rng"):
            transform.rng = random.Random(seed * 1000 + i)


# Module attributes that change during training but are not in the state_dict: the warm-up
# batch counters, ActivationBalancer's call count and Whiten's current probability. Checkpoints
# carry them so that a resumed run continues exactly like an uninterrupted one.
TRAINING_STATE_ATTRIBUTES = ("batch_count", "cpu_count", "prob")


def get_module_training_state(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """``{module name: {attribute: value}}`` for :data:`TRAINING_STATE_ATTRIBUTES`."""
    model = model.module if isinstance(model, DDP) else model
    state: Dict[str, Dict[str, Any]] = {}
    for name, module in model.named_modules():
        values = {
            attr: getattr(module, attr)
            for attr in TRAINING_STATE_ATTRIBUTES
            if isinstance(module.__dict__.get(attr), (int, float))
        }
        if values:
            state[name] = values
    return state


def set_module_training_state(model: nn.Module, state: Dict[str, Dict[str, Any]]) -> None:
    """Restore what :func:`get_module_training_state` returned (unknown modules are ignored)."""
    model = model.module if isinstance(model, DDP) else model
    modules = dict(model.named_modules())
    for name, values in state.items():
        if name in modules:
            for attr, value in values.items():
                setattr(modules[name], attr, value)


@contextlib.contextmanager
def preserved_rng_states() -> Iterator[None]:
    """Run a block (validation) without changing the training's random number streams."""
    states = get_rng_states()
    try:
        yield
    finally:
        set_rng_states(states)


# ---------------------------------------------------------------------------------------------
# Checkpoints


class _SamplerStateCapture:
    """Receives the sampler state from ``load_checkpoint`` (the data loader is built later)."""

    def __init__(self) -> None:
        self.state: Optional[Dict[str, Any]] = None

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.state = state


def load_checkpoint_if_available(
    params: AttributeDict,
    model: nn.Module,
    model_avg: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[LRSchedulerType] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
) -> Optional[Dict[str, Any]]:
    """Load ``checkpoint-{start_batch}.pt`` (if start_batch > 0) or ``epoch-{start_epoch-1}.pt``.

    Restores the model, averaged model, optimizer, scheduler and grad scaler, and updates
    ``params`` with the saved counters (``batch_idx_train``, best losses, ...). With
    ``--start-batch`` also ``params.start_epoch`` and ``params.cur_batch_idx``.

    Returns:
      None when starting from scratch, else the saved entries plus ``sampler`` (the sampler
      state) and ``rng_states`` (only in ``checkpoint-*.pt``).
    """
    if params.start_batch > 0:
        filename = params.exp_dir / f"checkpoint-{params.start_batch}.pt"
    elif params.start_epoch > 1:
        filename = params.exp_dir / f"epoch-{params.start_epoch - 1}.pt"
    else:
        return None
    if not filename.is_file():
        raise FileNotFoundError(
            f"{filename} does not exist: cannot resume (check --exp-dir, --start-epoch and "
            "--start-batch)"
        )
    sampler = _SamplerStateCapture()
    saved_params = load_checkpoint(
        filename,
        model=model,
        model_avg=model_avg,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        sampler=sampler,
    )
    saved_params["sampler"] = sampler.state
    keys = [
        "best_train_epoch",
        "best_valid_epoch",
        "batch_idx_train",
        "best_train_loss",
        "best_valid_loss",
        "num_skipped_batches",
        "batches_per_epoch",
    ]
    for key in keys:
        if key in saved_params:
            params[key] = saved_params[key]
    if params.start_batch > 0:
        if "cur_epoch" in saved_params:
            params.start_epoch = saved_params["cur_epoch"]
        if "cur_batch_idx" in saved_params:
            params.cur_batch_idx = saved_params["cur_batch_idx"]
    return saved_params


def _params_for_checkpoint(
    params: AttributeDict, model: nn.Module, train_dl: Any = None
) -> Dict[str, Any]:
    """``params`` plus the modules' training state and, for ``checkpoint-B.pt`` (``train_dl``
    given), the generator states."""
    saved = dict(params)
    saved["module_training_state"] = get_module_training_state(model)
    if train_dl is not None:
        saved["rng_states"] = get_rng_states(train_dl)
    return saved


def save_checkpoint(
    params: AttributeDict,
    model: nn.Module,
    model_avg: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[LRSchedulerType] = None,
    sampler: Optional[Any] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    rank: int = 0,
) -> None:
    """Save ``epoch-{cur_epoch}.pt`` (rank 0) and refresh ``best-train/valid-loss.pt``."""
    if rank != 0:
        return
    filename = params.exp_dir / f"epoch-{params.cur_epoch}.pt"
    save_checkpoint_impl(
        filename=filename,
        model=model,
        model_avg=model_avg,
        params=_params_for_checkpoint(params, model),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        sampler=sampler,
        rank=rank,
    )
    if params.best_train_epoch == params.cur_epoch:
        copyfile(src=filename, dst=params.exp_dir / "best-train-loss.pt")
    if params.best_valid_epoch == params.cur_epoch:
        copyfile(src=filename, dst=params.exp_dir / "best-valid-loss.pt")


# ---------------------------------------------------------------------------------------------
# Loss


def get_loss_scales(params: AttributeDict) -> Tuple[float, float]:
    """(simple_loss_scale, pruned_loss_scale) at ``params.batch_idx_train`` (warm-up ramp)."""
    batch, warm_step, s = params.batch_idx_train, params.warm_step, params.simple_loss_scale
    if batch >= warm_step:
        return s, 1.0
    return 1.0 - (batch / warm_step) * (1.0 - s), 0.1 + 0.9 * (batch / warm_step)


def combine_losses(params: AttributeDict, losses: Sequence[torch.Tensor]) -> torch.Tensor:
    """The training loss from the model's output ``(simple, pruned[, ctc])``: the warm-up scales
    of :func:`get_loss_scales`, plus ``ctc_loss_scale * ctc`` when the model has a CTC head."""
    simple_loss_scale, pruned_loss_scale = get_loss_scales(params)
    loss = simple_loss_scale * losses[0] + pruned_loss_scale * losses[1]
    if len(losses) == 3:
        loss = loss + params.ctc_loss_scale * losses[2]
    return loss


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast_context(params: AttributeDict, device: torch.device):
    """Autocast for ``--use-fp16``/``--use-bf16`` (a no-op context in full precision)."""
    dtype = get_autocast_dtype(params.get("use_fp16", False), params.get("use_bf16", False))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_audio_seconds(batch: Dict[str, Any]) -> float:
    """Seconds of (unpadded) audio in a batch, from the supervision frame counts."""
    return float(batch["supervisions"]["num_frames"].sum().item()) * FRAME_SHIFT_S


def compute_loss(
    params: AttributeDict,
    model: nn.Module,
    sp: spm.SentencePieceProcessor,
    batch: Dict[str, Any],
    is_training: bool,
) -> Tuple[torch.Tensor, MetricsTracker]:
    """Loss of one batch: ``simple_scale * simple_loss + pruned_scale * pruned_loss`` (sums),
    plus ``ctc_loss_scale * ctc_loss`` with ``--use-ctc``.

    Args:
      params: needs batch_idx_train, warm_step, simple_loss_scale, prune_range, am/lm_scale.
      model: the (possibly DDP-wrapped) transducer.
      sp: the BPE model encoding ``batch["supervisions"]["text"]``.
      batch: a ``K2SpeechRecognitionDataset`` batch; ``inputs`` (N, T, 80).
      is_training: build the autograd graph.
    Returns:
      (loss scalar, MetricsTracker with frames, utterances, loss, simple_loss, pruned_loss
      and, with a CTC head, ctc_loss).
    """
    device = _model_device(model)
    feature = batch["inputs"].to(device)
    assert feature.ndim == 3, feature.shape
    supervisions = batch["supervisions"]
    feature_lens = supervisions["num_frames"].to(device)
    y = sp.encode(list(supervisions["text"]), out_type=int)

    with torch.set_grad_enabled(is_training):
        losses = model(
            x=feature,
            x_lens=feature_lens,
            y=y,
            prune_range=params.prune_range,
            am_scale=params.am_scale,
            lm_scale=params.lm_scale,
        )
        loss = combine_losses(params, losses)
    assert loss.requires_grad == is_training
    simple_loss, pruned_loss = losses[:2]

    info = MetricsTracker()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info["frames"] = (feature_lens // params.subsampling_factor).sum().item()
    info["utterances"] = feature.size(0)
    info["loss"] = loss.detach().cpu().item()
    info["simple_loss"] = simple_loss.detach().cpu().item()
    info["pruned_loss"] = pruned_loss.detach().cpu().item()
    if len(losses) == 3:
        info["ctc_loss"] = losses[2].detach().cpu().item()
    return loss, info


def all_ranks_finite(loss: torch.Tensor, world_size: int) -> bool:
    """True when the loss is finite on every DDP rank (all ranks then skip a bad batch together,
    which keeps their gradient all-reduces in step)."""
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item() > 0)


def compute_validation_loss(
    params: AttributeDict,
    model: nn.Module,
    sp: spm.SentencePieceProcessor,
    valid_dl: torch.utils.data.DataLoader,
    world_size: int = 1,
) -> MetricsTracker:
    """Validation loss summed over the valid set (and over ranks). Leaves the model in eval
    mode and does not disturb the training's random number streams."""
    model.eval()
    tot_loss = MetricsTracker()
    with preserved_rng_states(), torch.no_grad():
        for batch in valid_dl:
            with autocast_context(params, _model_device(model)):
                loss, loss_info = compute_loss(params, model, sp, batch, is_training=False)
            if not math.isfinite(loss_info["loss"]):
                logging.warning("Validation batch with a non-finite loss: left out")
                continue
            tot_loss = tot_loss + loss_info
    if world_size > 1:
        tot_loss.reduce(_model_device(model))
    return tot_loss


def _per_frame(info: MetricsTracker, key: str = "loss") -> float:
    return float(info[key]) / max(float(info["frames"]), 1.0)


# ---------------------------------------------------------------------------------------------
# Training loop helpers


# glibc keeps the memory of freed variable-sized activation buffers, so a CPU run's resident
# memory climbs to several GB; returning it to the OS every few batches keeps it near 1-2 GB
# for about 1% of the time (every batch: ~20%).
MALLOC_TRIM_INTERVAL = 10


def _load_malloc_trim() -> Optional[Any]:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> None:
    """Return freed heap memory to the operating system (glibc only; a no-op elsewhere)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class ProgressMeter:
    """Throughput and ETA for the progress line."""

    def __init__(self, world_size: int, batches_per_epoch: Optional[int]) -> None:
        self.start = time.time()
        self.world_size = world_size
        self.batches_per_epoch = batches_per_epoch
        self.audio_seconds = 0.0
        self.batches = 0

    def update(self, audio_seconds: float) -> None:
        self.audio_seconds += audio_seconds
        self.batches += 1

    def describe(self, batch_idx: int) -> str:
        elapsed = max(time.time() - self.start, 1e-6)
        speed = self.audio_seconds / elapsed
        text = f"{speed:.1f} s audio/s" + (" per process" if self.world_size > 1 else "")
        if self.batches_per_epoch:
            remaining = max(self.batches_per_epoch - (batch_idx + 1), 0)
            eta = remaining * elapsed / max(self.batches, 1)
            percent = 100.0 * min((batch_idx + 1) / self.batches_per_epoch, 1.0)
            text += f", {percent:.0f}% of epoch, ETA {_format_seconds(eta)}"
        return text + f", elapsed {_format_seconds(elapsed)}"


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def babysit_grad_scaler(
    scaler: torch.amp.GradScaler, batch_idx: int, tb_writer: Optional[Any] = None
) -> float:
    """icefall's fp16 grad-scale care: regrow a small scale, warn, and stop with advice when it
    collapses. Returns the current scale."""
    cur_grad_scale = scaler.get_scale()
    if cur_grad_scale < 1.0 or (cur_grad_scale < 8.0 and batch_idx % 400 == 0):
        scaler.update(cur_grad_scale * 2.0)
    if cur_grad_scale < 0.01:
        logging.warning(f"Grad scale is small: {cur_grad_scale}")
    if cur_grad_scale < 1.0e-05:
        if tb_writer is not None:
            tb_writer.flush()
        raise_grad_scale_is_too_small_error(cur_grad_scale)
    return cur_grad_scale


def display_and_save_batch(batch: Dict[str, Any], params: AttributeDict, sp: Any) -> None:
    """Save a batch that made training fail to ``exp_dir/batch-<uuid>.pt`` and describe it."""
    filename = params.exp_dir / f"batch-{uuid.uuid4()}.pt"
    logging.info(f"Saving batch to {filename}")
    torch.save(batch, filename)
    features = batch["inputs"]
    logging.info(f"features shape: {features.shape}")
    y = sp.encode(list(batch["supervisions"]["text"]), out_type=int)
    logging.info(f"num tokens: {sum(len(ids) for ids in y)}")


class ActivationDiagnostics:
    """``--print-diagnostics``: per-module output statistics over the first batches."""

    def __init__(self, model: nn.Module) -> None:
        self.stats: Dict[str, List[float]] = {}
        self.handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in model.named_modules()
            if name
        ]

    def _hook(self, name: str):
        def hook(_module, _inputs, output) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                return
            values = tensor.detach().float()
            entry = self.stats.setdefault(name, [0.0, 0.0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += values.abs().mean().item()
            entry[2] += values.pow(2).mean().sqrt().item()
            entry[3] = max(entry[3], values.abs().max().item())

        return hook

    def print_diagnostics(self, model: nn.Module) -> None:
        for name, (count, abs_mean, rms, abs_max) in self.stats.items():
            logging.info(
                f"module={name}: output abs-mean {abs_mean / count:.3g}, rms {rms / count:.3g}, "
                f"abs-max {abs_max:.3g}"
            )
        for name, param in model.named_parameters():
            grad = "none" if param.grad is None else f"{param.grad.norm().item():.3g}"
            logging.info(f"param={name}: rms {param.pow(2).mean().sqrt().item():.3g}, grad {grad}")
        for handle in self.handles:
            handle.remove()


def train_one_epoch(
    params: AttributeDict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRSchedulerType,
    sp: spm.SentencePieceProcessor,
    train_dl: Any,
    valid_dl: Any,
    scaler: torch.amp.GradScaler,
    model_avg: Optional[nn.Module] = None,
    tb_writer: Optional[Any] = None,
    world_size: int = 1,
    rank: int = 0,
    rng_states: Optional[Dict[str, Any]] = None,
) -> Optional[MetricsTracker]:
    """Train for one epoch (``params.cur_epoch``).

    Per batch: forward under autocast, skip (and count) the batch if its loss is not finite on
    any rank, backward, ``set_batch_count``, ``scheduler.step_batch``, optimizer step; then the
    averaged model (rank 0, every ``average_period``), ``checkpoint-B.pt`` (every
    ``save_every_n``), the progress line and validation (every ``valid_interval``).

    Args:
      train_dl: the training loader (any iterable of batches; its ``sampler`` is saved if any).
      rng_states: generator states to restore once the loader iterator exists (resumption).
    Returns:
      The validation result when the epoch's last batch was followed by a validation, else None.
    """
    model.train()
    device = _model_device(model)
    tot_loss = MetricsTracker()
    first_batch_idx = params.pop("cur_batch_idx", -1) + 1
    progress = ProgressMeter(world_size, params.get("batches_per_epoch"))
    sampler = getattr(train_dl, "sampler", None)
    diagnostics = ActivationDiagnostics(model) if params.print_diagnostics else None

    batches = iter(train_dl)
    if rng_states is not None:
        set_rng_states(rng_states, train_dl)

    batch_idx = first_batch_idx - 1
    valid_info: Optional[MetricsTracker] = None
    for batch_idx, batch in enumerate(batches, start=first_batch_idx):
        params.batch_idx_train += 1
        batch_size = len(batch["supervisions"]["text"])
        try:
            with autocast_context(params, device):
                loss, loss_info = compute_loss(params, model, sp, batch, is_training=True)
            if not all_ranks_finite(loss, world_size):
                params.num_skipped_batches += 1
                logging.warning(
                    f"Epoch {params.cur_epoch}, batch {batch_idx}: non-finite loss "
                    f"({loss_info['loss']}); batch skipped, not trained on "
                    f"({params.num_skipped_batches} skipped so far)"
                )
                if tb_writer is not None:
                    tb_writer.add_scalar(
                        "train/skipped_batches", params.num_skipped_batches, params.batch_idx_train
                    )
                optimizer.zero_grad()
                continue
            tot_loss = (tot_loss * (1 - 1 / params.reset_interval)) + loss_info
            scaler.scale(loss).backward()
            set_batch_count(model, params.batch_idx_train * params.batch_count_scale)
            scheduler.step_batch(params.batch_idx_train)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
        except Exception:
            display_and_save_batch(batch, params=params, sp=sp)
            raise
        progress.update(batch_audio_seconds(batch))
        if device.type == "cpu" and batch_idx % MALLOC_TRIM_INTERVAL == 0:
            release_free_memory()

        if diagnostics is not None and batch_idx - first_batch_idx >= 5:
            diagnostics.print_diagnostics(model)
            return

        if (
            rank == 0
            and model_avg is not None
            and params.batch_idx_train > 0
            and params.batch_idx_train % params.average_period == 0
        ):
            update_averaged_model(params=params, model_cur=model, model_avg=model_avg)

        if params.batch_idx_train > 0 and params.batch_idx_train % params.save_every_n == 0:
            params.cur_batch_idx = batch_idx
            save_checkpoint_with_global_batch_idx_impl(
                out_dir=params.exp_dir,
                global_batch_idx=params.batch_idx_train,
                model=model,
                model_avg=model_avg,
                params=_params_for_checkpoint(params, model, train_dl),
                optimizer=optimizer,
                scheduler=scheduler,
                sampler=sampler,
                scaler=scaler,
                rank=rank,
            )
            del params.cur_batch_idx
            remove_checkpoints(out_dir=params.exp_dir, topk=params.keep_last_k, rank=rank)

        cur_grad_scale = None
        if params.use_fp16 and batch_idx % 100 == 0:
            cur_grad_scale = babysit_grad_scaler(scaler, batch_idx, tb_writer)

        if batch_idx % params.log_interval == 0:
            cur_lr = scheduler.get_last_lr()[0]
            grad_text = f", grad scale {scaler.get_scale():.1f}" if params.use_fp16 else ""
            logging.info(
                f"Epoch {params.cur_epoch}, batch {batch_idx} (global {params.batch_idx_train}): "
                f"loss {_per_frame(loss_info):.4f} "
                f"[simple {_per_frame(loss_info, 'simple_loss'):.3f}, "
                f"pruned {_per_frame(loss_info, 'pruned_loss'):.3f}], "
                f"running loss {_per_frame(tot_loss):.4f}, batch size {batch_size}, "
                f"lr {cur_lr:.2e}{grad_text}, {progress.describe(batch_idx)}"
            )
            if tb_writer is not None:
                tb_writer.add_scalar("train/learning_rate", cur_lr, params.batch_idx_train)
                loss_info.write_summary(tb_writer, "train/current_", params.batch_idx_train)
                tot_loss.write_summary(tb_writer, "train/tot_", params.batch_idx_train)
                if params.use_fp16:
                    grad_scale = cur_grad_scale if cur_grad_scale else scaler.get_scale()
                    tb_writer.add_scalar("train/grad_scale", grad_scale, params.batch_idx_train)

        valid_info = None
        if params.batch_idx_train % params.valid_interval == 0:
            valid_info = run_validation(params, model, sp, valid_dl, world_size, tb_writer)
            model.train()

    params.batches_per_epoch = batch_idx + 1
    if tot_loss["frames"] > 0:
        params.train_loss = _per_frame(tot_loss)
        if params.train_loss < params.best_train_loss:
            params.best_train_epoch = params.cur_epoch
            params.best_train_loss = params.train_loss
    return valid_info


def run_validation(
    params: AttributeDict,
    model: nn.Module,
    sp: spm.SentencePieceProcessor,
    valid_dl: Any,
    world_size: int,
    tb_writer: Optional[Any],
) -> MetricsTracker:
    """Compute, log and record (TensorBoard ``train/valid_*``) the validation loss."""
    logging.info("Computing validation loss")
    start = time.time()
    valid_info = compute_validation_loss(params, model, sp, valid_dl, world_size)
    logging.info(
        f"Epoch {params.cur_epoch}, batch {params.batch_idx_train}, validation: {valid_info} "
        f"({time.time() - start:.1f}s)"
    )
    if tb_writer is not None:
        valid_info.write_summary(tb_writer, "train/valid_", params.batch_idx_train)
    return valid_info


# ---------------------------------------------------------------------------------------------
# Set-up


def _choose_num_threads(params: AttributeDict, device: torch.device, world_size: int) -> int:
    if params.num_threads > 0:
        return params.num_threads
    if device.type == "cuda":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    # DataLoader workers share the cores: oversubscribed intra-op threads make every parallel op
    # wait for a time slice (measured 20x slower per training step on 2 shared cores).
    return max(1, cores // max(world_size, 1) - params.num_workers)


def _choose_device(world_size: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", get_local_rank() if world_size > 1 else 0)
    return torch.device("cpu")


def load_bpe_model(params: AttributeDict) -> spm.SentencePieceProcessor:
    """Load ``params.bpe_model``; set ``params.blank_id`` and ``params.vocab_size``."""
    if not Path(params.bpe_model).is_file():
        raise FileNotFoundError(
            f"BPE model {params.bpe_model} not found: run prepare.sh (BPE stage) or pass "
            "--bpe-model"
        )
    sp = spm.SentencePieceProcessor()
    sp.load(str(params.bpe_model))
    params.blank_id = sp.piece_to_id("<blk>")
    params.vocab_size = sp.get_piece_size()
    return sp


def _setup_train_loader(
    params: AttributeDict,
    data: AsrDataModule,
    sp: spm.SentencePieceProcessor,
    sampler_state: Optional[Dict[str, Any]],
):
    train_cuts = filter_cuts(
        data.train_cuts(),
        sp=sp,
        min_duration=params.min_utt_duration,
        max_duration=params.max_utt_duration,
        name="train cuts",
    )
    train_dl = data.train_dataloaders(train_cuts, sampler_state_dict=sampler_state)
    # The loader draws its workers' base seed from this generator instead of the global one, so
    # creating the loader iterator does not shift the training's random numbers on resumption.
    if isinstance(train_dl, torch.utils.data.DataLoader):
        train_dl.generator = torch.Generator().manual_seed(params.seed)
    return train_dl


def scan_pessimistic_batches_for_oom(
    model: nn.Module,
    train_dl: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    sp: spm.SentencePieceProcessor,
    params: AttributeDict,
) -> None:
    """CUDA only: run forward/backward on the largest batches first, so an out-of-memory error
    shows up at once with advice (a copy of the sampler is used; training data is untouched)."""
    from lhotse.dataset.sampling.utils import find_pessimistic_batches

    logging.info("Sanity check -- see if any of the batches in epoch 1 would cause OOM.")
    batches, crit_values = find_pessimistic_batches(copy.deepcopy(train_dl.sampler))
    for criterion, cuts in batches.items():
        batch = train_dl.dataset[cuts]
        try:
            with autocast_context(params, _model_device(model)):
                loss, _ = compute_loss(params, model, sp, batch, is_training=True)
            loss.backward()
            optimizer.zero_grad()
        except torch.cuda.OutOfMemoryError:
            logging.error(
                "Your GPU ran out of memory with the current max_duration setting. We recommend "
                "decreasing max_duration and trying again.\n"
                f"Failing criterion: {criterion} (={crit_values[criterion]}) ..."
            )
            display_and_save_batch(batch, params=params, sp=sp)
            raise
        logging.info(f"Maximum memory allocated so far is {torch.cuda.max_memory_allocated()}")


def get_run_params(args: argparse.Namespace) -> AttributeDict:
    """``get_params()`` updated with the command line (None values keep the fixed defaults)."""
    params = get_params()
    params.update({key: value for key, value in vars(args).items() if value is not None})
    librispeech_subset = getattr(args, "corpus", None) == "librispeech" and not getattr(
        args, "full_libri", True
    )
    if getattr(args, "valid_interval", None) is None and librispeech_subset:
        params.valid_interval = 1600
    params.exp_dir = Path(params.exp_dir)
    return params


def run(
    rank: int, world_size: int, args: argparse.Namespace, use_ddp_launch: bool = False
) -> nn.Module:
    """Train on one process (one DDP rank).

    Args:
      rank: global rank (0 without DDP).
      world_size: number of processes.
      args: parsed command line (:func:`get_args`).
      use_ddp_launch: the process was started by torchrun (rendezvous from the environment).
    Returns:
      The trained model (unwrapped from DDP).
    """
    params = get_run_params(args)
    if params.use_fp16 and not torch.cuda.is_available():
        raise ValueError("--use-fp16 needs a CUDA GPU; on CPU use --use-bf16 1 (or neither)")
    if params.save_every_n < params.average_period:
        raise ValueError(
            f"--save-every-n ({params.save_every_n}) must be >= --average-period "
            f"({params.average_period})"
        )

    fix_random_seed(params.seed)
    if world_size > 1:
        setup_dist(rank, world_size, params.master_port, use_ddp_launch=use_ddp_launch)

    setup_logger(f"{params.exp_dir}/log/log-train")
    logging.info("Training started")

    tb_writer = None
    if params.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb_writer = SummaryWriter(log_dir=f"{params.exp_dir}/tensorboard")

    device = _choose_device(world_size)
    num_threads = _choose_num_threads(params, device, world_size)
    torch.set_num_threads(num_threads)
    logging.info(f"Device: {device}, torch threads: {num_threads}")

    sp = load_bpe_model(params)
    logging.info(params)

    logging.info("About to create model")
    model = get_transducer_model(params)
    num_param = sum(p.numel() for p in model.parameters())
    logging.info(f"Number of model parameters: {num_param}")

    model_avg: Optional[nn.Module] = None
    if rank == 0:
        model_avg = copy.deepcopy(model).to(torch.float64)

    model.to(device)
    optimizer, scheduler = get_optimizer_and_scheduler(params, model)
    scaler = torch.amp.GradScaler(device.type, enabled=params.use_fp16, init_scale=1.0)

    checkpoints = load_checkpoint_if_available(
        params=params,
        model=model,
        model_avg=model_avg,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
    )
    # The warm-up schedules read module.batch_count, which is not part of the state_dict.
    set_batch_count(model, params.batch_idx_train * params.batch_count_scale)
    if checkpoints is not None and "module_training_state" in checkpoints:
        set_module_training_state(model, checkpoints["module_training_state"])
    if world_size > 1:
        logging.info("Using DDP")
        device_ids = [device.index] if device.type == "cuda" else None
        model = DDP(model, device_ids=device_ids, find_unused_parameters=True)
    if params.inf_check:
        register_inf_check_hooks(model)

    data = AsrDataModule(args)
    resuming_mid_epoch = params.start_batch > 0 and checkpoints is not None
    sampler_state = checkpoints.get("sampler") if resuming_mid_epoch else None
    rng_states = checkpoints.get("rng_states") if resuming_mid_epoch else None
    train_dl = _setup_train_loader(params, data, sp, sampler_state)
    valid_dl = data.valid_dataloaders(data.valid_cuts())

    if device.type == "cuda" and not params.print_diagnostics and not resuming_mid_epoch:
        scan_pessimistic_batches_for_oom(model, train_dl, optimizer, sp, params)

    for epoch in range(params.start_epoch, params.num_epochs + 1):
        scheduler.step_epoch(epoch - 1)
        fix_random_seed(params.seed + epoch - 1)
        reseed_data_transforms(train_dl, params.seed + epoch - 1)
        if isinstance(train_dl, torch.utils.data.DataLoader) and train_dl.generator is not None:
            train_dl.generator.manual_seed(params.seed + epoch - 1)
        train_dl.sampler.set_epoch(epoch - 1)
        if tb_writer is not None:
            tb_writer.add_scalar("train/epoch", epoch, params.batch_idx_train)
        params.cur_epoch = epoch

        valid_info = train_one_epoch(
            params=params,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            sp=sp,
            train_dl=train_dl,
            valid_dl=valid_dl,
            scaler=scaler,
            model_avg=model_avg,
            tb_writer=tb_writer,
            world_size=world_size,
            rank=rank,
            rng_states=rng_states,
        )
        rng_states = None
        if params.print_diagnostics:
            break

        if valid_info is None:
            valid_info = run_validation(params, model, sp, valid_dl, world_size, tb_writer)
            model.train()
        if valid_info["frames"] > 0:
            params.valid_loss = _per_frame(valid_info)
            if params.valid_loss < params.best_valid_loss:
                params.best_valid_epoch = epoch
                params.best_valid_loss = params.valid_loss
        logging.info(
            f"Epoch {epoch} done: train loss {params.get('train_loss', float('nan')):.4f}, "
            f"valid loss {params.get('valid_loss', float('nan')):.4f}, "
            f"{params.num_skipped_batches} batch(es) skipped so far"
        )

        save_checkpoint(
            params=params,
            model=model,
            model_avg=model_avg,
            optimizer=optimizer,
            scheduler=scheduler,
            sampler=train_dl.sampler,
            scaler=scaler,
            rank=rank,
        )

    logging.info("Done!")
    if tb_writer is not None:
        tb_writer.close()
    if world_size > 1:
        dist.barrier()
        cleanup_dist()
    return model.module if isinstance(model, DDP) else model


def _launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parse the command line and train: N spawned processes with ``--world-size N``, the
    torchrun-provided rank otherwise."""
    args = get_args(argv)
    if _launched_by_torchrun():
        world_size = get_world_size()
        run(rank=get_rank(), world_size=world_size, args=args, use_ddp_launch=world_size > 1)
        return
    world_size = args.world_size
    if world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {world_size}")
    if world_size > 1:
        mp.spawn(run, args=(world_size, args), nprocs=world_size, join=True)
    else:
        run(rank=0, world_size=1, args=args)


if __name__ == "__main__":
    main()
