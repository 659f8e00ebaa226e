#!/usr/bin/env python3
"""Speed and memory of the pruned RNN-T path against the full loss, and of the recursion
against CTC. Prints one JSON object.

1. Full ``rnnt_loss`` with a real joiner (B=8, T=250, S=80, V=500, joiner dim 512) against the
   whole pruned path (``rnnt_loss_smoothed(return_grad=True)``, ``get_rnnt_prune_ranges``
   (s_range 5), ``do_rnnt_pruning``, joiner, ``rnnt_loss_pruned``), forward + backward.
2. ``mutual_information_recursion`` forward + backward against ``torch.nn.functional.ctc_loss``
   forward + backward on a lattice of the same size (B=16, T=500, S=100).

Peak memory: CUDA allocator peak on GPU; on CPU each path runs once in a fresh subprocess and
reports its peak resident set size (VmHWM) minus the resident size just before the run.

Usage: python3 benchmarks/rnnt_loss.py [--device cpu|cuda] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from icefall.rnnt_loss import (
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    mutual_information_recursion,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_smoothed,
)

LOSS_SHAPE = dict(B=8, T=250, S=80, V=500, J=512)
RECURSION_SHAPE = dict(B=16, T=500, S=100, C=500)
S_RANGE = 5


class Joiner(nn.Module):
    """icefall's joiner: ``output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))``."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(dim, dim)
        self.decoder_proj = nn.Linear(dim, dim)
        self.output_linear = nn.Linear(dim, vocab_size)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        return self.output_linear(torch.tanh(enc + dec))


class LossProblem:
    """Encoder/decoder outputs, targets and the modules of a transducer's loss head."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        B, T, S, V, J = (LOSS_SHAPE[k] for k in ("B", "T", "S", "V", "J"))
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.joiner = Joiner(J, V).to(device)
        self.simple_am_proj = nn.Linear(J, V).to(device)
        self.simple_lm_proj = nn.Linear(J, V).to(device)
        self.encoder_out = torch.randn(B, T, J, generator=gen).to(device).requires_grad_(True)
        self.decoder_out = torch.randn(B, S + 1, J, generator=gen).to(device).requires_grad_(True)
        self.symbols = torch.randint(1, V, (B, S), generator=gen).to(device)
        x_lens = torch.randint(int(0.8 * T), T + 1, (B,), generator=gen)
        y_lens = torch.randint(int(0.8 * S), S + 1, (B,), generator=gen)
        x_lens[0], y_lens[0] = T, S
        zeros = torch.zeros(B, dtype=torch.int64)
        self.boundary = torch.stack([zeros, zeros, y_lens, x_lens], dim=1).to(device)

    def full(self) -> None:
        enc = self.joiner.encoder_proj(self.encoder_out).unsqueeze(2)  # (B, T, 1, J)
        dec = self.joiner.decoder_proj(self.decoder_out).unsqueeze(1)  # (B, 1, S+1, J)
        logits = self.joiner(enc, dec)  # (B, T, S+1, V)
        loss = rnnt_loss(logits, self.symbols, 0, self.boundary, reduction="sum")
        loss.backward()

    def pruned(self) -> None:
        lm = self.simple_lm_proj(self.decoder_out)
        am = self.simple_am_proj(self.encoder_out)
        simple_loss, (px_grad, py_grad) = rnnt_loss_smoothed(
            lm, am, self.symbols, 0, 0.25, 0.0, self.boundary, reduction="sum", return_grad=True
        )
        ranges = get_rnnt_prune_ranges(px_grad, py_grad, self.boundary, S_RANGE)
        am_pruned, lm_pruned = do_rnnt_pruning(
            self.joiner.encoder_proj(self.encoder_out),
            self.joiner.decoder_proj(self.decoder_out),
            ranges,
        )
        logits = self.joiner(am_pruned, lm_pruned)  # (B, T, S_RANGE, V)
        pruned_loss = rnnt_loss_pruned(logits, self.symbols, ranges, 0, self.boundary, "regular",
                                       reduction="sum")  # fmt: skip
        (0.5 * simple_loss + pruned_loss).backward()


class RecursionProblem:
    """A regular lattice for the recursion and a CTC problem with as many frames/symbols."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        B, T, S, C = (RECURSION_SHAPE[k] for k in ("B", "T", "S", "C"))
        gen = torch.Generator().manual_seed(seed)
        self.px = torch.randn(B, S, T + 1, generator=gen).sub(3.0).to(device).requires_grad_(True)
        self.py = torch.randn(B, S + 1, T, generator=gen).sub(1.0).to(device).requires_grad_(True)
        log_probs = torch.randn(T, B, C, generator=gen).log_softmax(-1)
        self.log_probs = log_probs.to(device).requires_grad_(True)
        self.targets = torch.randint(1, C, (B, S), generator=gen).to(device)
        self.input_lengths = torch.full((B,), T, dtype=torch.int64, device=device)
        self.target_lengths = torch.full((B,), S, dtype=torch.int64, device=device)

    def recursion(self) -> None:
        mutual_information_recursion(self.px, self.py).sum().backward()

    def ctc(self) -> None:
        loss = F.ctc_loss(self.log_probs, self.targets, self.input_lengths, self.target_lengths,
                          reduction="sum")  # fmt: skip
        loss.backward()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], None], device: torch.device, repeats: int) -> Dict[str, float]:
    """Median and min seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    _sync(device)
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times)}


def cuda_kernel_seconds(fn: Callable[[], None]) -> float:
    """Summed GPU kernel time of one call (shows how much of the wall time is launch-bound)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    total_us = 0.0
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        total_us += event.self_cuda_time_total if device_us is None else device_us
    return total_us / 1e6


def cuda_peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak CUDA memory above what was allocated before the call."""
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_bytes_in_subprocess(which: str) -> int:
    """Run one fwd+bwd of ``which`` in a fresh interpreter and return its peak RSS increase."""
    command = [sys.executable, os.path.abspath(__file__), "--measure-cpu-memory", which]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return int(output.strip().splitlines()[-1])


def measure_cpu_memory(which: str) -> None:
    device = torch.device("cpu")
    problem = LossProblem(device) if which in ("full", "pruned") else RecursionProblem(device)
    before = _status_bytes("VmRSS")
    getattr(problem, which)()
    # VmHWM (unlike ru_maxrss) is not inherited from the forking parent.
    print(max(_status_bytes("VmHWM") - before, 0))


def run(device: torch.device, repeats: int) -> Dict[str, object]:
    loss_problem = LossProblem(device)
    full_time = time_it(loss_problem.full, device, max(1, repeats // 2))
    pruned_time = time_it(loss_problem.pruned, device, repeats)
    recursion_problem = RecursionProblem(device)
    recursion_time = time_it(recursion_problem.recursion, device, repeats)
    ctc_time = time_it(recursion_problem.ctc, device, repeats)

    if device.type == "cuda":
        peaks = {
            name: cuda_peak_bytes(fn, device)
            for name, fn in (
                ("full", loss_problem.full),
                ("pruned", loss_problem.pruned),
                ("recursion", recursion_problem.recursion),
                ("ctc", recursion_problem.ctc),
            )
        }
        memory_method = "torch.cuda.max_memory_allocated minus allocated before the call"
        kernel_seconds = {
            "full": cuda_kernel_seconds(loss_problem.full),
            "pruned": cuda_kernel_seconds(loss_problem.pruned),
        }
    else:
        peaks = {name: cpu_peak_bytes_in_subprocess(name) for name in ("full", "pruned")}
        memory_method = "peak RSS (VmHWM) minus RSS before the call, fresh subprocess each"
        kernel_seconds = None

    mib = 2.0**20
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loss_shape": {**LOSS_SHAPE, "s_range": S_RANGE},
        "full_rnnt_loss_fwd_bwd": full_time,
        "pruned_path_fwd_bwd": pruned_time,
        "speedup_pruned_vs_full": full_time["median_s"] / pruned_time["median_s"],
        "gpu_kernel_seconds_per_call": kernel_seconds,
        "peak_memory_mib": {name: value / mib for name, value in peaks.items()},
        "memory_ratio_pruned_over_full": peaks["pruned"] / max(peaks["full"], 1),
        "memory_method": memory_method,
        "recursion_shape": RECURSION_SHAPE,
        "recursion_fwd_bwd": recursion_time,
        "ctc_loss_fwd_bwd": ctc_time,
        "recursion_over_ctc_time": recursion_time["median_s"] / ctc_time["median_s"],
        "targets": {
            "speedup_pruned_vs_full": ">= 10",
            "memory_ratio": "<= 0.2",
            "recursion_over_ctc_time": "<= 3",
        },  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure-cpu-memory", choices=["full", "pruned"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_cpu_memory:
        measure_cpu_memory(args.measure_cpu_memory)
        return
    print(json.dumps(run(torch.device(args.device), args.repeats), indent=2))


if __name__ == "__main__":
    main()
