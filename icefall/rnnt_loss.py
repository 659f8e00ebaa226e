"""RNN-T losses with k2's API, in plain PyTorch (no k2).

Names, signatures and semantics follow ``k2.rnnt_loss``: code written for
``k2.rnnt_loss_pruned(...)`` works with ``icefall.rnnt_loss.rnnt_loss_pruned(...)``.

Shapes: B batch, T frames, S the maximum number of symbols, C the vocabulary size.
Every loss reduces a pair of lattice log-prob tensors ``px`` (symbol moves; (B, S, T+1) for the
"regular" topology, (B, S, T) for "modified"/"constrained") and ``py`` (blank moves, (B, S+1, T))
with :func:`mutual_information_recursion`. ``boundary`` is an optional int64 (B, 4) tensor
``[s_begin, t_begin, s_end, t_end]`` per utterance (icefall passes ``[0, 0, y_len, x_len]``).

The pruned recipe (what ``Transducer.forward`` does):

1. ``rnnt_loss_smoothed(..., return_grad=True)`` with the cheap additive joiner gives the simple
   loss and the occupation probabilities ``(px_grad, py_grad)``;
2. :func:`get_rnnt_prune_ranges` turns them into ``s_range`` symbol positions per frame;
3. :func:`do_rnnt_pruning` gathers encoder/decoder projections on those positions only;
4. the real joiner runs on (B, T, s_range, J) and :func:`rnnt_loss_pruned` gives the pruned loss.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from icefall.mutual_information import mutual_information_recursion

__all__ = [
    "mutual_information_recursion",
    "fix_for_boundary",
    "get_rnnt_logprobs",
    "rnnt_loss_simple",
    "get_rnnt_logprobs_joint",
    "rnnt_loss",
    "get_rnnt_prune_ranges",
    "do_rnnt_pruning",
    "get_rnnt_logprobs_pruned",
    "rnnt_loss_pruned",
    "get_rnnt_logprobs_smoothed",
    "rnnt_loss_smoothed",
]

NEG_INF = float("-inf")
RNNT_TYPES = ("regular", "modified", "constrained")

LossAndGrads = Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]


def _check_rnnt_type(rnnt_type: str) -> None:
    if rnnt_type not in RNNT_TYPES:
        raise ValueError(f"rnnt_type must be one of {RNNT_TYPES}, got {rnnt_type!r}")


def _check_one_symbol_per_frame(rnnt_type: str, S: int, T: int, boundary: Optional[Tensor]) -> None:
    """The modified/constrained topologies emit at most one symbol per frame: need S_b <= T_b."""
    if rnnt_type == "regular":
        return
    if boundary is None:
        if S > T:
            raise ValueError(
                f"rnnt_type={rnnt_type!r} emits at most one symbol per frame, but every utterance "
                f"has S={S} symbols and only T={T} frames"
            )
        return
    lengths = boundary.detach().cpu()
    num_symbols = lengths[:, 2] - lengths[:, 0]
    num_frames = lengths[:, 3] - lengths[:, 1]
    too_long = (num_symbols > num_frames).nonzero().flatten().tolist()
    if too_long:
        b = too_long[0]
        raise ValueError(
            f"rnnt_type={rnnt_type!r} emits at most one symbol per frame, but utterance {b} has "
            f"{int(num_symbols[b])} symbols and only {int(num_frames[b])} frames "
            f"({len(too_long)} such utterance(s) in the batch: {too_long[:10]})"
        )


def _append_neg_inf_column(px: Tensor) -> Tensor:
    """(B, S, T) -> (B, S, T+1): no symbol can be emitted on the one-past-the-last frame."""
    return F.pad(px, (0, 1), value=NEG_INF)


def fix_for_boundary(px: Tensor, boundary: Optional[Tensor] = None) -> Tensor:
    """Regular topology: forbid symbols on frame ``t_end`` of each utterance.

    Args:
      px: (B, S, T+1).
      boundary: optional int64 (B, 4).
    Returns:
      px with ``px[b, :, boundary[b, 3]] = -inf`` (px itself when boundary is None).
    """
    if boundary is None:
        return px
    B, S, T1 = px.shape
    column = boundary[:, 3].to(px.device).reshape(B, 1, 1).expand(B, S, 1)
    return px.scatter(2, column, NEG_INF)


def _finish_logprobs(
    px: Tensor, py: Tensor, boundary: Optional[Tensor], rnnt_type: str
) -> Tuple[Tensor, Tensor]:
    """Topology-specific last step shared by all get_rnnt_logprobs* functions."""
    if rnnt_type == "regular":
        px = fix_for_boundary(px, boundary)
    elif rnnt_type == "constrained":
        px = px + py[:, 1:, :]
    return px, py


def _apply_delay_penalty(
    px: Tensor, boundary: Optional[Tensor], rnnt_type: str, delay_penalty: float
) -> Tensor:
    """Add ``delay_penalty * ((T_b - 1) / 2 - t)`` to px[b, :, t] (rewards early symbols)."""
    if delay_penalty <= 0.0:
        return px
    B, S, T0 = px.shape
    T = T0 - 1 if rnnt_type == "regular" else T0
    if boundary is None:
        offset = torch.full((B,), (T - 1) / 2, dtype=px.dtype, device=px.device)
    else:
        offset = (boundary[:, 3].to(px.device, px.dtype) - 1) / 2
    frames = torch.arange(T0, device=px.device, dtype=px.dtype)
    penalty = (offset.view(B, 1, 1) - frames.view(1, 1, T0)) * delay_penalty
    return px + penalty


def _reduce(negated_loss: Tensor, reduction: Optional[str]) -> Tensor:
    if reduction == "none":
        return -negated_loss
    if reduction == "mean":
        return -torch.mean(negated_loss)
    if reduction == "sum":
        return -torch.sum(negated_loss)
    raise ValueError(f"reduction should be 'none', 'mean' or 'sum', got {reduction!r}")


def _loss_from_logprobs(
    px: Tensor,
    py: Tensor,
    boundary: Optional[Tensor],
    rnnt_type: str,
    delay_penalty: float,
    reduction: Optional[str],
    return_grad: bool,
) -> LossAndGrads:
    px = _apply_delay_penalty(px, boundary, rnnt_type, delay_penalty)
    if return_grad:
        scores, grads = mutual_information_recursion(px, py, boundary, return_grad=True)
        return _reduce(scores, reduction), grads
    scores = mutual_information_recursion(px, py, boundary)
    return _reduce(scores, reduction)


def _check_lm_am(lm: Tensor, am: Tensor, symbols: Tensor) -> Tuple[int, int, int, int]:
    if lm.ndim != 3 or am.ndim != 3:
        raise ValueError(f"lm and am must be 3-D, got {tuple(lm.shape)}, {tuple(am.shape)}")
    B, T, C = am.shape
    S = lm.shape[1] - 1
    if lm.shape[0] != B or lm.shape[2] != C:
        raise ValueError(f"lm {tuple(lm.shape)} does not match am {tuple(am.shape)}")
    if tuple(symbols.shape) != (B, S):
        raise ValueError(f"symbols must have shape {(B, S)}, got {tuple(symbols.shape)}")
    return B, S, T, C


def _symbol_logits_of_am(am: Tensor, symbols: Tensor) -> Tensor:
    """(B, T, C), (B, S) -> (B, S, T): ``am[b, t, symbols[b, s]]``."""
    B, T, C = am.shape
    S = symbols.shape[1]
    return torch.gather(am, 2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)


def get_rnnt_logprobs(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
) -> Tuple[Tensor, Tensor]:
    """px, py for the "simple" joiner ``log_softmax(lm[b, s] + am[b, t])``.

    The normalizer ``log sum_c exp(lm[b,s,c] + am[b,t,c])`` is computed as a matrix product of
    exponentials, so the (B, S+1, T, C) tensor is never built.

    Args:
      lm: (B, S+1, C) prediction-network logits; am: (B, T, C) encoder logits;
      symbols: (B, S) int64; termination_symbol: the blank id.
    Returns:
      px: (B, S, T+1) (regular) or (B, S, T); py: (B, S+1, T).
    """
    _check_rnnt_type(rnnt_type)
    B, S, T, C = _check_lm_am(lm, am, symbols)
    _check_one_symbol_per_frame(rnnt_type, S, T, boundary)
    normalizers = _additive_normalizers(lm, am)[0]  # (B, S+1, T)
    px = _symbol_logits_of_am(am, symbols) + torch.gather(lm[:, :S], 2, symbols.unsqueeze(-1))
    px = px - normalizers[:, :S]
    if rnnt_type == "regular":
        px = _append_neg_inf_column(px)
    py = am[:, :, termination_symbol].unsqueeze(1) + lm[:, :, termination_symbol].unsqueeze(2)
    py = py - normalizers
    return _finish_logprobs(px, py, boundary, rnnt_type)


def _additive_normalizers(lm: Tensor, am: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``log sum_c exp(lm[b,s,c] + am[b,t,c])`` via one batched matmul, and its parts.

    Args:
      lm: (B, S+1, C); am: (B, T, C).
    Returns:
      normalizers (B, S+1, T); lm_probs ``exp(lm - lm_max)`` (B, S+1, C); lm_max (B, S+1, 1);
      am_probs ``exp(am - am_max)`` (B, T, C); am_max (B, T, 1).
    """
    am_max = am.max(dim=2, keepdim=True)[0]  # (B, T, 1)
    lm_max = lm.max(dim=2, keepdim=True)[0]  # (B, S+1, 1)
    am_probs = (am - am_max).exp()
    lm_probs = (lm - lm_max).exp()
    tiny = torch.finfo(am_probs.dtype).tiny
    products = torch.matmul(lm_probs, am_probs.transpose(1, 2)) + tiny
    normalizers = products.log() + lm_max + am_max.transpose(1, 2)
    return normalizers, lm_probs, lm_max, am_probs, am_max


def rnnt_loss_simple(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: Optional[str] = "mean",
    return_grad: bool = False,
) -> LossAndGrads:
    """RNN-T loss with the additive joiner (see :func:`get_rnnt_logprobs`).

    Returns:
      the loss ((B,) for reduction "none", else a scalar), or ``(loss, (px_grad, py_grad))``
      with the occupation probabilities when return_grad is True.
    """
    px, py = get_rnnt_logprobs(lm, am, symbols, termination_symbol, boundary, rnnt_type)
    return _loss_from_logprobs(px, py, boundary, rnnt_type, delay_penalty, reduction, return_grad)


def get_rnnt_logprobs_joint(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
) -> Tuple[Tensor, Tensor]:
    """px, py from full joiner logits.

    Args:
      logits: (B, T, S+1, C); symbols: (B, S) int64.
    Returns:
      px: (B, S, T+1) (regular) or (B, S, T); py: (B, S+1, T).
    """
    _check_rnnt_type(rnnt_type)
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, T, S+1, C), got {tuple(logits.shape)}")
    B, T, S1, C = logits.shape
    S = S1 - 1
    if tuple(symbols.shape) != (B, S):
        raise ValueError(f"symbols must have shape {(B, S)}, got {tuple(symbols.shape)}")
    _check_one_symbol_per_frame(rnnt_type, S, T, boundary)
    normalizers = torch.logsumexp(logits, dim=3).transpose(1, 2)  # (B, S+1, T)
    index = symbols.view(B, 1, S, 1).expand(B, T, S, 1)
    px = torch.gather(logits[:, :, :S], 3, index).squeeze(3).transpose(1, 2)
    px = px - normalizers[:, :S]
    if rnnt_type == "regular":
        px = _append_neg_inf_column(px)
    py = logits[:, :, :, termination_symbol].transpose(1, 2) - normalizers
    px, py = _finish_logprobs(px.contiguous(), py.contiguous(), boundary, rnnt_type)
    return px, py


def rnnt_loss(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: Optional[str] = "mean",
) -> Tensor:
    """RNN-T loss from full joiner logits (B, T, S+1, C) (unpruned; memory-hungry)."""
    px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol, boundary, rnnt_type)
    return _loss_from_logprobs(px, py, boundary, rnnt_type, delay_penalty, reduction, False)


def _monotonic_lower_bound(x: Tensor) -> Tensor:
    """Largest non-decreasing sequence below x along the last dim (running min from the right)."""
    return torch.flip(torch.cummin(torch.flip(x, dims=(-1,)), dim=-1)[0], dims=(-1,))


def _adjust_pruning_lower_bound(s_begin: Tensor, s_range: int) -> Tensor:
    """Make the per-frame lower bounds (B, T) usable as prune ranges.

    Afterwards ``s_begin`` is non-decreasing in t, starts at 0, and never jumps by ``s_range``
    or more between frames (so no symbol is skipped). The jump limit is a monotone bound on
    ``(s_range - 1) * t - s_begin[t]``, which is non-decreasing exactly when every step is
    below s_range.
    """
    T = s_begin.shape[1]
    slope = (s_range - 1) * torch.arange(T, device=s_begin.device)
    s_begin = _monotonic_lower_bound(s_begin)
    headroom = _monotonic_lower_bound(slope - s_begin).clamp(min=0)
    return slope - headroom


def get_rnnt_prune_ranges(
    px_grad: Tensor, py_grad: Tensor, boundary: Tensor, s_range: int
) -> Tensor:
    """Choose ``s_range`` consecutive symbol positions per frame from occupation probabilities.

    Args:
      px_grad: (B, S, T+1) (regular) or (B, S, T) (modified), from ``return_grad=True``.
      py_grad: (B, S+1, T).
      boundary: int64 (B, 4) ``[0, 0, y_len, x_len]``.
      s_range: positions kept per frame. For the regular topology it is raised (with a logged
        warning) to ``max_b((S_b - 1) // T_b + 2)`` when too small for some utterance to emit
        all its symbols; values above S become S + 1.
    Returns:
      ranges: int64 (B, T, s_range), ``ranges[b, t] = s_begin[b, t] + arange(s_range)``, with
      s_begin non-decreasing in t, 0 at t = 0, and ``S_b - s_range + 1`` (>= 0) from the last
      frame of each utterance on.
    """
    B, S, T1 = px_grad.shape
    T = py_grad.shape[-1]
    if T1 not in (T, T + 1) or tuple(py_grad.shape) != (B, S + 1, T):
        raise ValueError(f"px_grad {tuple(px_grad.shape)} and py_grad {tuple(py_grad.shape)}")
    if tuple(boundary.shape) != (B, 4):
        raise ValueError(f"boundary must be (B, 4) = {(B, 4)}, got {tuple(boundary.shape)}")
    regular = T1 == T + 1
    boundary = boundary.to(px_grad.device)
    if regular:
        lengths = boundary.detach().cpu()
        needed = int(((lengths[:, 2] - 1) // lengths[:, 3].clamp(min=1) + 2).max())
        if s_range < needed:
            logging.warning(
                f"get_rnnt_prune_ranges: s_range={s_range} is too small for S={S}, T={T} "
                f"(an utterance has more symbols than frames); using s_range={needed}"
            )
            s_range = needed
    else:
        _check_one_symbol_per_frame("modified", S, T, boundary)
    if s_range > S:
        s_range = S + 1
    if s_range < (2 if regular else 1):
        raise ValueError(f"s_range={s_range} is too small for rnnt_type regular={regular}")

    num_starts = S + 1 - s_range + 1
    # Blank occupancy inside each window [s0, s0 + s_range), minus the symbol occupancy that
    # enters the window from below (px_grad[s0 - 1]).
    window_blank = py_grad.unfold(1, s_range, 1).sum(dim=-1)  # (B, num_starts, T)
    entering = F.pad(px_grad[:, :, :T], (0, 0, 1, 0))[:, :num_starts]
    s_begin = torch.argmax(window_blank - entering, dim=1)  # (B, T)

    frames = torch.arange(T, device=px_grad.device).view(1, T)
    before_last_frame = frames < boundary[:, 3:4] - 1
    final_begin = (boundary[:, 2:3] - s_range + 1).clamp(min=0)
    s_begin = torch.where(before_last_frame, s_begin, final_begin)
    s_begin = _adjust_pruning_lower_bound(s_begin, s_range if regular else 2)
    return s_begin.unsqueeze(2) + torch.arange(s_range, device=px_grad.device)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> Tuple[Tensor, Tensor]:
    """Expand encoder and gather decoder outputs on the prune ranges.

    Args:
      am: (B, T, Ce) encoder side; lm: (B, S+1, Cd) decoder side; ranges: (B, T, R) int64.
    Returns:
      am_pruned (B, T, R, Ce) (an expanded view) and lm_pruned (B, T, R, Cd).
    """
    B, T, R = ranges.shape
    if am.shape[0] != B or lm.shape[0] != B or am.shape[1] != T:
        raise ValueError(
            f"am {tuple(am.shape)}, lm {tuple(lm.shape)} and ranges {tuple(ranges.shape)} differ"
        )
    Ce = am.shape[2]
    Cd = lm.shape[2]
    am_pruned = am.unsqueeze(2).expand(B, T, R, Ce)
    lm_pruned = torch.gather(lm, 1, ranges.reshape(B, T * R, 1).expand(B, T * R, Cd))
    return am_pruned, lm_pruned.view(B, T, R, Cd)


def _roll_by_shifts(src: Tensor, shifts: Tensor) -> Tensor:
    """Roll each row of the last dim right by its own shift.

    Args:
      src: (B, T, N); shifts: (B, T) int64.
    Returns:
      (B, T, N) with ``out[b, t, (n + shifts[b, t]) % N] = src[b, t, n]``.
    """
    B, T, N = src.shape
    index = torch.remainder(
        torch.arange(N, device=src.device).view(1, 1, N) - shifts.view(B, T, 1), N
    )
    return torch.gather(src, 2, index)


def _scatter_pruned(values: Tensor, ranges: Tensor, width: int) -> Tensor:
    """(B, T, R) values at positions ranges[b, t, :] -> (B, T, width), -inf elsewhere."""
    B, T, R = values.shape
    padded = F.pad(values, (0, width - R), value=NEG_INF)
    return _roll_by_shifts(padded, ranges[:, :, 0])


def get_rnnt_logprobs_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    use_hat_loss: bool = False,
) -> Tuple[Tensor, Tensor]:
    """px, py from joiner logits computed only on the prune ranges (-inf outside them).

    Args:
      logits: (B, T, R, C) joiner output on ``ranges``; symbols: (B, S) int64;
      ranges: (B, T, R) int64 from :func:`get_rnnt_prune_ranges`.
      use_hat_loss: use the HAT factorisation: blank log-prob ``logsigmoid(l_blank)``, symbol
        log-prob ``logsigmoid(-l_blank) + log_softmax(non-blank logits)``.
    Returns:
      px: (B, S, T+1) (regular) or (B, S, T); py: (B, S+1, T).
    """
    _check_rnnt_type(rnnt_type)
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, T, R, C), got {tuple(logits.shape)}")
    B, T, R, C = logits.shape
    if tuple(ranges.shape) != (B, T, R):
        raise ValueError(f"ranges must have shape {(B, T, R)}, got {tuple(ranges.shape)}")
    S = symbols.shape[1]
    if symbols.shape[0] != B:
        raise ValueError(f"symbols {tuple(symbols.shape)} does not match batch size {B}")
    _check_one_symbol_per_frame(rnnt_type, S, T, boundary)

    with_end = F.pad(symbols, (0, 1), value=termination_symbol)  # (B, S+1)
    pruned_symbols = torch.gather(with_end.unsqueeze(1).expand(B, T, S + 1), 2, ranges)
    symbol_logits = torch.gather(logits, 3, pruned_symbols.unsqueeze(3)).squeeze(3)
    blank_logits = logits[:, :, :, termination_symbol]
    if use_hat_loss:
        is_blank = torch.arange(C, device=logits.device) == termination_symbol
        nonblank_normalizers = torch.logsumexp(logits.masked_fill(is_blank, NEG_INF), dim=3)
        px_pruned = symbol_logits - nonblank_normalizers + F.logsigmoid(-blank_logits)
        py_pruned = F.logsigmoid(blank_logits)
    else:
        normalizers = torch.logsumexp(logits, dim=3)
        px_pruned = symbol_logits - normalizers
        py_pruned = blank_logits - normalizers

    px = _scatter_pruned(px_pruned, ranges, S + 1)[:, :, :S].permute(0, 2, 1)  # (B, S, T)
    if rnnt_type == "regular":
        px = _append_neg_inf_column(px)
    py = _scatter_pruned(py_pruned, ranges, S + 1).permute(0, 2, 1)  # (B, S+1, T)
    return _finish_logprobs(px.contiguous(), py.contiguous(), boundary, rnnt_type)


def rnnt_loss_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: Optional[str] = "mean",
    use_hat_loss: bool = False,
) -> Tensor:
    """RNN-T loss from joiner logits on the prune ranges (see :func:`get_rnnt_logprobs_pruned`).

    Returns:
      the loss, (B,) for reduction "none", else a scalar.
    """
    px, py = get_rnnt_logprobs_pruned(
        logits, symbols, ranges, termination_symbol, boundary, rnnt_type, use_hat_loss
    )
    return _loss_from_logprobs(px, py, boundary, rnnt_type, delay_penalty, reduction, False)


def get_rnnt_logprobs_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
) -> Tuple[Tensor, Tensor]:
    """px, py of the additive joiner interpolated with LM-only and AM-only systems.

    ``px = (1 - l - a) * px_combined + l * px_lm_only + a * px_am_only`` (same for py), where the
    LM-only system normalises ``lm`` alone and the AM-only system combines ``am`` with a unigram
    LM (the average of ``softmax(lm)`` over the batch and all positions). A zero scale is
    replaced by 1e-20 so that 0 * -inf never makes NaN.

    Args:
      lm: (B, S+1, C); am: (B, T, C); symbols: (B, S) int64.
    Returns:
      px: (B, S, T+1) (regular) or (B, S, T); py: (B, S+1, T).
    """
    _check_rnnt_type(rnnt_type)
    B, S, T, C = _check_lm_am(lm, am, symbols)
    _check_one_symbol_per_frame(rnnt_type, S, T, boundary)
    normalizers, lm_probs, lm_max, am_probs, am_max = _additive_normalizers(lm, am)
    tiny = torch.finfo(lm.dtype).tiny

    lm_sums = lm_probs.sum(dim=2, keepdim=True)  # (B, S+1, 1)
    unigram = (lm_probs / lm_sums).mean(dim=(0, 1)) + tiny  # (C,)
    amonly_normalizers = (am_probs @ unigram).log().unsqueeze(1) + am_max.transpose(1, 2)
    log_unigram = unigram.log()
    lmonly_normalizers = lm_sums.log() + lm_max  # (B, S+1, 1)

    px_am = _symbol_logits_of_am(am, symbols)  # (B, S, T)
    px_lm = torch.gather(lm[:, :S], 2, symbols.unsqueeze(-1))  # (B, S, 1)
    px_combined = px_am + px_lm - normalizers[:, :S]
    px_amonly = px_am + log_unigram[symbols].unsqueeze(-1) - amonly_normalizers
    px_lmonly = (px_lm - lmonly_normalizers[:, :S]).expand(B, S, T)

    py_am = am[:, :, termination_symbol].unsqueeze(1)  # (B, 1, T)
    py_lm = lm[:, :, termination_symbol].unsqueeze(2)  # (B, S+1, 1)
    py_combined = py_am + py_lm - normalizers
    py_amonly = py_am + log_unigram[termination_symbol] - amonly_normalizers
    py_lmonly = py_lm - lmonly_normalizers

    combined_scale = 1.0 - lm_only_scale - am_only_scale
    lm_only_scale = lm_only_scale if lm_only_scale != 0.0 else 1e-20
    am_only_scale = am_only_scale if am_only_scale != 0.0 else 1e-20
    px = px_combined * combined_scale + px_lmonly * lm_only_scale + px_amonly * am_only_scale
    py = py_combined * combined_scale + py_lmonly * lm_only_scale + py_amonly * am_only_scale
    if rnnt_type == "regular":
        px = _append_neg_inf_column(px)
    return _finish_logprobs(px, py, boundary, rnnt_type)


def rnnt_loss_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: Optional[str] = "mean",
    return_grad: bool = False,
) -> LossAndGrads:
    """Smoothed simple RNN-T loss (see :func:`get_rnnt_logprobs_smoothed`).

    Returns:
      the loss ((B,) for reduction "none", else a scalar), or ``(loss, (px_grad, py_grad))``
      with the occupation probabilities when return_grad is True (icefall feeds them to
      :func:`get_rnnt_prune_ranges`).
    """
    px, py = get_rnnt_logprobs_smoothed(
        lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale, boundary, rnnt_type
    )
    return _loss_from_logprobs(px, py, boundary, rnnt_type, delay_penalty, reduction, return_grad)
