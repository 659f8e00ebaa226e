#!/usr/bin/env python3
"""Time one training step of the tiny streaming Zipformer transducer on CPU. Prints one JSON object.

The model, optimizer (ScaledAdam + Eden) and loss scales are the recipe's tiny preset
(``CORPUS_DEFAULTS["tiny"]`` in ``train.py``). The batch is fixed: synthetic features of a
realistic shape (``--num-utts`` utterances of ``--seconds`` s, 80-dim fbank, ``--tokens`` tokens
each from a 256-token vocabulary). Each measured step is split into

- ``encoder``: the Zipformer forward (timed with hooks on ``model.encoder``),
- ``losses``: the rest of the forward (decoder, simple/smoothed loss, pruning, joiner, pruned loss),
- ``backward``: ``loss.backward()``,
- ``optimizer``: ``scheduler.step_batch`` + ``optimizer.step`` + ``zero_grad``.

With ``--data-dir DIR`` (an ``egs/tiny/ASR`` folder with ``data/fbank``), the data loader of the
tiny preset is also timed alone (``data``: seconds per batch and audio seconds per second of the
loader on its own), with ``--num-workers`` workers.

Usage: python3 benchmarks/train_step.py [--threads 2] [--steps 8] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs" / "librispeech" / "ASR" / "pruned_transducer_stateless7_streaming"
sys.path.insert(0, str(RECIPE))

from scaling import set_batch_count  # noqa: E402
from train import (  # noqa: E402
    combine_losses,
    get_args,
    get_optimizer_and_scheduler,
    get_params,
    get_transducer_model,
)

VOCAB_SIZE = 256
FRAMES_PER_SECOND = 100


def tiny_params(batch_idx_train: int) -> Dict:
    """The tiny preset's parameters (model, schedule), with ``batch_idx_train`` set."""
    params = get_params()
    params.update(vars(get_args(["--corpus", "tiny"])))
    params.vocab_size = VOCAB_SIZE
    params.blank_id = 0
    params.batch_idx_train = batch_idx_train
    return params


def synthetic_batch(num_utts: int, seconds: float, tokens: int, seed: int = 0):
    """Features (N, T, 80), lengths (N,) spread over [0.8, 1] * T, and N token-id lists."""
    gen = torch.Generator().manual_seed(seed)
    num_frames = int(seconds * FRAMES_PER_SECOND)
    x = torch.randn(num_utts, num_frames, 80, generator=gen)
    lens = torch.linspace(int(0.8 * num_frames), num_frames, num_utts).to(torch.int64)
    y = [
        torch.randint(3, VOCAB_SIZE, (max(1, tokens - i % 5),), generator=gen).tolist()
        for i in range(num_utts)
    ]
    return x, lens, y


class EncoderTimer:
    """Accumulates the wall time of ``module``'s forward calls through hooks."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.total = 0.0
        self._start = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *_) -> None:
        self._start = time.perf_counter()

    def _post(self, *_) -> None:
        self.total += time.perf_counter() - self._start


def time_steps(args: argparse.Namespace) -> Dict[str, float]:
    """Median seconds of each part of a training step over ``args.steps`` steps."""
    torch.manual_seed(0)
    params = tiny_params(args.batch_idx_train)
    model = get_transducer_model(params)
    model.train()
    set_batch_count(model, params.batch_idx_train * params.batch_count_scale)
    optimizer, scheduler = get_optimizer_and_scheduler(params, model)
    x, x_lens, y = synthetic_batch(args.num_utts, args.seconds, args.tokens)
    timer = EncoderTimer(model.encoder)
    parts: Dict[str, List[float]] = {k: [] for k in ("encoder", "losses", "backward", "optimizer")}
    for step in range(args.warmup + args.steps):
        timer.total = 0.0
        t0 = time.perf_counter()
        losses = model(
            x=x,
            x_lens=x_lens,
            y=y,
            prune_range=params.prune_range,
            am_scale=params.am_scale,
            lm_scale=params.lm_scale,
        )
        loss = combine_losses(params, losses)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        scheduler.step_batch(params.batch_idx_train + step)
        optimizer.step()
        optimizer.zero_grad()
        t3 = time.perf_counter()
        if step >= args.warmup:
            parts["encoder"].append(timer.total)
            parts["losses"].append(t1 - t0 - timer.total)
            parts["backward"].append(t2 - t1)
            parts["optimizer"].append(t3 - t2)
    result = {k: statistics.median(v) for k, v in parts.items()}
    result["step"] = sum(result.values())
    result["num_params"] = sum(p.numel() for p in model.parameters())
    result["batch_audio_seconds"] = float(x_lens.sum()) / FRAMES_PER_SECOND
    result["audio_seconds_per_second"] = result["batch_audio_seconds"] / result["step"]
    return result


def time_loader(args: argparse.Namespace) -> Dict[str, float]:
    """Seconds per batch of the tiny preset's training loader alone (features, CutMix,
    SpecAugment), over ``args.loader_batches`` batches after the first."""
    from icefall.data.datamodule import AsrDataModule

    cwd = os.getcwd()
    os.chdir(args.data_dir)
    try:
        data_args = get_args(["--corpus", "tiny", "--num-workers", str(args.num_workers)])
        data = AsrDataModule(data_args)
        loader = data.train_dataloaders(data.train_cuts())
        audio = 0.0
        it = iter(loader)
        next(it)
        start = time.perf_counter()
        for _ in range(args.loader_batches):
            batch = next(it)
            audio += float(batch["supervisions"]["num_frames"].sum()) / FRAMES_PER_SECOND
        elapsed = time.perf_counter() - start
    finally:
        os.chdir(cwd)
    return {
        "seconds_per_batch": elapsed / args.loader_batches,
        "audio_seconds_per_second": audio / elapsed,
        "num_workers": args.num_workers,
        "max_duration": data_args.max_duration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=8, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    parser.add_argument("--num-utts", type=int, default=12, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=5.0, help="longest utterance (s)")
    parser.add_argument("--tokens", type=int, default=25, help="tokens per utterance")
    parser.add_argument(
        "--batch-idx-train",
        type=int,
        default=500,
        help="training batches already seen (drives balancer probabilities and warm-ups)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="egs/tiny/ASR folder")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--loader-batches", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: Dict = {
        "threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "batch": {"num_utts": args.num_utts, "seconds": args.seconds, "tokens": args.tokens},
        "train_step": time_steps(args),
    }
    if args.data_dir is not None:
        result["data"] = time_loader(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
