"""Errors with advice for common training failures."""

from __future__ import annotations


class GradScaleTooSmallError(RuntimeError):
    """fp16 training diverged: the grad scaler kept shrinking its scale."""


def raise_grad_scale_is_too_small_error(cur_grad_scale: float) -> None:
    """Raise :class:`GradScaleTooSmallError` explaining how to get fp16 training back on track."""
    raise GradScaleTooSmallError(
        f"grad_scale is too small, exiting: {cur_grad_scale}\n"
        "The gradients overflowed (inf/nan) in float16 again and again, which usually means "
        "training diverged. Things to try, in this order:\n"
        "  1. Lower the learning rate, e.g. --base-lr 0.045, then 0.04, 0.035, ... "
        "(not below about 0.02), and restart from the last good checkpoint "
        "(--start-epoch or --start-batch).\n"
        "  2. Check the data: very long utterances, empty transcripts, or transcripts with more "
        "tokens than (subsampled) frames.\n"
        "  3. Rerun with --inf-check 1 to log the first module whose output or gradient is "
        "not finite.\n"
        "  4. Train in bfloat16 (--use-bf16 1) on hardware that supports it, or in float32 "
        "(--use-fp16 0)."
    )
