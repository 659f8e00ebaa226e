"""The mutual-information recursion behind every RNN-T loss, in plain PyTorch (k2's semantics).

Given ``px`` (B, S, T+1) for the regular topology or (B, S, T) for the modified one, and ``py``
(B, S+1, T), the recursion fills ``p`` (B, S+1, T+1)::

    p[b, s_begin, t_begin] = 0
    regular:  p[b,s,t] = logaddexp(p[b,s-1,t] + px[b,s-1,t],   p[b,s,t-1] + py[b,s,t-1])
    modified: p[b,s,t] = logaddexp(p[b,s-1,t-1] + px[b,s-1,t-1], p[b,s,t-1] + py[b,s,t-1])

(terms with an index outside the lattice are -inf) and returns ``p[b, s_end, t_end]``.

How it is computed: each cell of the regular lattice depends only on cells of the previous
anti-diagonal ``k = s + t``, so the lattice is "skewed" once (one strided copy) into
(S+T+1, B, S+1) and filled one anti-diagonal at a time with three fused vector ops per step,
vectorised over the batch and the diagonal. The modified lattice is filled one frame (column) at
a time. The backward pass is the same recursion run on the lattice reversed per utterance (which
gives the backward scores ``beta``); the gradients are the occupation probabilities
``exp(alpha + px + beta_next - total)``, computed in one vectorised step. No autograd graph is built
inside the loops: the work is done under ``no_grad`` in a hand-written ``autograd.Function``.

On CUDA, when Triton is importable, the step loop runs as one Triton kernel (one program per
utterance walking all steps) instead of three PyTorch ops per step; it computes the same
numbers as the pure-PyTorch loop, which stays the reference and the CPU path. The environment
variable ``ICEFALL_MI_BACKEND`` chooses: ``auto`` (default), ``torch`` or ``triton``.
"""

import logging
import os
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the pure-PyTorch loop is used
    triton = None

NEG_INF = float("-inf")
BACKEND_ENV = "ICEFALL_MI_BACKEND"
_triton_broken = False
# Shift lanes with tl.gather (Triton >= 3.2) rather than through memory and a barrier.
_triton_shift_in_registers = triton is not None and hasattr(tl, "gather")

if triton is not None:

    @triton.jit
    def _log_add(a, b):
        high = tl.maximum(a, b)
        low = tl.minimum(a, b)
        return tl.where(high == float("-inf"), high, high + tl.log(1.0 + tl.exp(low - high)))

    @triton.jit
    def _wavefront_kernel(
        from_below_ptr,
        from_left_ptr,
        steps_ptr,
        num_steps,
        batch,
        width,
        BLOCK: tl.constexpr,
        SHIFT_IN_REGISTERS: tl.constexpr,
    ):
        """One program per utterance b walks all steps; steps is (N, B, width + 1), column 0 of
        each step is -inf. Lane s needs lane s-1's previous value: with SHIFT_IN_REGISTERS it
        comes from ``tl.gather``, otherwise from memory after a block barrier."""
        b = tl.program_id(0)
        s = tl.arange(0, BLOCK)
        inside = s < width
        in_stride = batch * width
        out_stride = batch * (width + 1)
        in_base = b * width + s
        out_base = b * (width + 1) + s
        previous = tl.load(steps_ptr + out_base + 1, mask=inside, other=float("-inf"))
        x = tl.load(from_below_ptr + in_stride + in_base, mask=inside, other=float("-inf"))
        y = tl.load(from_left_ptr + in_stride + in_base, mask=inside, other=float("-inf"))
        for n in range(1, num_steps):
            # Prefetch the next step's inputs while this one is computed (the last step
            # reloads its own: n + 1 - (n + 1) // num_steps stays in range).
            next_offset = (n + 1 - (n + 1) // num_steps) * in_stride + in_base
            next_x = tl.load(from_below_ptr + next_offset, mask=inside, other=float("-inf"))
            next_y = tl.load(from_left_ptr + next_offset, mask=inside, other=float("-inf"))
            if SHIFT_IN_REGISTERS:
                shifted = tl.gather(previous, tl.maximum(s - 1, 0), 0)
                below = tl.where(s == 0, float("-inf"), shifted)
            else:
                below = tl.load(
                    steps_ptr + (n - 1) * out_stride + out_base, mask=inside, other=float("-inf")
                )
            current = _log_add(below + x, previous + y)
            tl.store(steps_ptr + n * out_stride + out_base + 1, current, mask=inside)
            if not SHIFT_IN_REGISTERS:
                tl.debug_barrier()
            previous = current
            x = next_x
            y = next_y


def _triton_num_warps(block: int) -> int:
    """Warps per program: the steps are latency-bound, so few warps share each barrier."""
    return min(max(block // 64, 1), 8)


def _wavefront_triton(steps: Tensor, from_below: Tensor, from_left: Tensor) -> bool:
    """Fill ``steps`` with the Triton kernel; return False when the torch loop must do it."""
    global _triton_broken
    backend = os.environ.get(BACKEND_ENV, "auto")
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"{BACKEND_ENV} must be auto, torch or triton, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "triton" and triton is None:
        raise RuntimeError(f"{BACKEND_ENV}=triton but triton cannot be imported")
    if backend == "auto" and (
        triton is None
        or _triton_broken
        or not steps.is_cuda
        or steps.dtype not in (torch.float32, torch.float64)
    ):
        return False
    if steps.numel() >= 2**31:  # the kernel uses 32-bit offsets
        return False
    num_steps, B, width = from_below.shape
    block = max(triton.next_power_of_2(width), 16)
    try:
        _wavefront_kernel[(B,)](
            from_below,
            from_left,
            steps,
            num_steps,
            B,
            width,
            BLOCK=block,
            SHIFT_IN_REGISTERS=_triton_shift_in_registers,
            num_warps=_triton_num_warps(block),
            num_stages=1,
        )
    except Exception as error:  # a broken Triton install must not stop training
        if backend == "triton":
            raise
        _triton_broken = True
        logging.warning(f"Triton wavefront kernel failed ({error!r}); using the PyTorch loop")
        return False
    return True


def _check_inputs(px: Tensor, py: Tensor, boundary: Optional[Tensor]) -> Tuple[bool, bool]:
    """Validate shapes and the boundary (one host copy of it).

    Returns:
      (modified, starts_at_origin): px is (B, S, T); every utterance starts at (0, 0).
    """
    if px.ndim != 3 or py.ndim != 3:
        raise ValueError(f"px and py must be 3-D, got {tuple(px.shape)} and {tuple(py.shape)}")
    B, S, T1 = px.shape
    T = py.shape[-1]
    if T1 not in (T, T + 1):
        raise ValueError(f"px last dim must be T or T+1 with T={T}, got px {tuple(px.shape)}")
    if tuple(py.shape) != (B, S + 1, T):
        raise ValueError(f"py must have shape {(B, S + 1, T)}, got {tuple(py.shape)}")
    if px.dtype != py.dtype or px.device != py.device:
        raise ValueError("px and py must share dtype and device")
    if not px.is_floating_point():
        raise ValueError(f"px and py must be floating point, got {px.dtype}")
    if boundary is not None:
        if boundary.dtype != torch.int64 or tuple(boundary.shape) != (B, 4):
            raise ValueError(
                f"boundary must be int64 of shape {(B, 4)}, got {boundary.dtype} "
                f"{tuple(boundary.shape)}"
            )
        s_begin, t_begin, s_end, t_end = boundary.detach().cpu().unbind(1)
        bad = (s_begin < 0) | (s_begin > s_end) | (s_end > S)
        bad |= (t_begin < 0) | (t_begin > t_end) | (t_end > T)
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"boundary of utterance {b} is {boundary[b].tolist()}; need "
                f"0 <= s_begin <= s_end <= S={S} and 0 <= t_begin <= t_end <= T={T}"
            )
        return T1 == T, not bool(((s_begin != 0) | (t_begin != 0)).any())
    return T1 == T, True


def _reindex(x: Tensor, s_offset: Tensor, t_offset: Tensor, reverse: bool) -> Tensor:
    """Shift (and optionally reverse) each utterance of a lattice tensor.

    Args:
      x: (B, M, N).
      s_offset, t_offset: (B,) int64 offsets; every index they produce lies in [-M, 2M) x
        [-N, 2N) (true for all the shifts and reversals used here).
      reverse: if True, read the axes backwards.
    Returns:
      y: (B, M, N) with ``y[b, i, j] = x[b, s_offset[b] + d * i, t_offset[b] + d * j]``,
      d = -1 if reverse else 1, and -inf where that index falls outside x.
    """
    B, M, N = x.shape
    if M == 0 or N == 0:
        return x.clone()
    step = -1 if reverse else 1
    # Modulo (2M, 2N), every out-of-range index lands in the -inf padding.
    padded = F.pad(x, (0, N, 0, M), value=NEG_INF)  # (B, 2M, 2N)
    rows = torch.remainder(
        s_offset.view(B, 1) + torch.arange(0, step * M, step, device=x.device), 2 * M
    )
    cols = torch.remainder(
        t_offset.view(B, 1) + torch.arange(0, step * N, step, device=x.device), 2 * N
    )
    flat = (rows * (2 * N)).unsqueeze(2) + cols.unsqueeze(1)  # (B, M, N)
    return torch.gather(padded.reshape(B, 4 * M * N), 1, flat.view(B, M * N)).view(B, M, N)


def _skew(m: Tensor) -> Tensor:
    """Lay a (B, S+1, W) lattice out by anti-diagonals.

    ``m`` holds the lattice in columns [0, W - S) and -inf in the S columns after them (W = K =
    S+T+1 diagonals). Returns (K, B, S+1) with ``out[k, b, s] = m[b, s, k - s]`` (-inf off-lattice).
    """
    B, S1, K = m.shape
    m = m.contiguous()
    diag = m.as_strided((B, S1, K), (S1 * K, K - 1, 1))
    return diag.permute(2, 0, 1).contiguous()


def _unskew(diagonals: Tensor, T: int) -> Tensor:
    """Inverse of :func:`_skew`: (K, B, S+1) anti-diagonals -> (B, S+1, T+1) lattice."""
    K, B, S1 = diagonals.shape
    by_row = diagonals.permute(1, 2, 0).contiguous()  # (B, S+1, K)
    return by_row.as_strided((B, S1, T + 1), (S1 * K, K + 1, 1))


def _wavefront_torch(steps: Tensor, from_below: Tensor, from_left: Tensor) -> None:
    """Fill ``steps[1:]`` in place with one fused logaddexp per step (pure PyTorch)."""
    num_steps, B, width = from_below.shape
    via_symbol = steps.new_empty(B, width)
    via_blank = steps.new_empty(B, width)
    for n in range(1, num_steps):
        previous = steps[n - 1]
        torch.add(previous[:, :-1], from_below[n], out=via_symbol)
        torch.add(previous[:, 1:], from_left[n], out=via_blank)
        torch.logaddexp(via_symbol, via_blank, out=steps[n, :, 1:])


def _wavefront(from_below: Tensor, from_left: Tensor) -> Tensor:
    """Run ``a[n, s] = logaddexp(a[n-1, s-1] + from_below[n, s], a[n-1, s] + from_left[n, s])``.

    Args:
      from_below, from_left: (N, B, S+1) log-probs entering each cell of step n from cell s-1
        and from cell s of step n-1 (row 0 is unused).
    Returns:
      a: (N, B, S+1) with ``a[0] = [0, -inf, ...]``.
    """
    num_steps, B, width = from_below.shape
    # Column 0 of each step stands for s = -1 (always -inf), so "s - 1" is a plain slice.
    steps = from_below.new_full((num_steps, B, width + 1), NEG_INF)
    steps[0, :, 1] = 0.0
    if not _wavefront_triton(steps, from_below, from_left):
        _wavefront_torch(steps, from_below, from_left)
    return steps[:, :, 1:]


def _alpha_regular(px: Tensor, py: Tensor) -> Tensor:
    """Forward scores of the regular lattice, starting at (0, 0) for every utterance.

    Args:
      px: (B, S, T+1); py: (B, S+1, T).
    Returns:
      alpha: (B, S+1, T+1).
    """
    B, S, T1 = px.shape
    K = S + T1  # number of anti-diagonals, S + T + 1
    # Incoming log-probs of cell (s, t): from (s-1, t) by px[s-1, t], from (s, t-1) by py[s, t-1].
    from_below = _skew(F.pad(px, (0, K - T1, 1, 0), value=NEG_INF))
    from_left = _skew(F.pad(py, (1, K - T1, 0, 0), value=NEG_INF))
    return _unskew(_wavefront(from_below, from_left), T1 - 1)


def _alpha_modified(px: Tensor, py: Tensor) -> Tensor:
    """Forward scores of the modified lattice, starting at (0, 0) for every utterance.

    Frame t is one step: cell (s, t) comes from (s-1, t-1) by px[s-1, t-1] and from (s, t-1)
    by py[s, t-1].

    Args:
      px: (B, S, T); py: (B, S+1, T).
    Returns:
      alpha: (B, S+1, T+1).
    """
    from_diagonal = F.pad(px, (1, 0, 1, 0), value=NEG_INF).permute(2, 0, 1).contiguous()
    from_left = F.pad(py, (1, 0), value=NEG_INF).permute(2, 0, 1).contiguous()
    return _wavefront(from_diagonal, from_left).permute(1, 2, 0)


def _alpha(px: Tensor, py: Tensor, modified: bool) -> Tensor:
    return _alpha_modified(px, py) if modified else _alpha_regular(px, py)


def _full_boundary(px: Tensor, py: Tensor) -> Tensor:
    B, S, _ = px.shape
    T = py.shape[-1]
    row = torch.tensor([0, 0, S, T], dtype=torch.int64, device=px.device)
    return row.expand(B, 4)


def _forward_scores(
    px: Tensor, py: Tensor, boundary: Tensor, modified: bool, starts_at_origin: bool
) -> Tensor:
    """alpha (B, S+1, T+1): log-sum of all partial paths from each utterance's start."""
    if starts_at_origin:
        return _alpha(px, py, modified)
    s_begin, t_begin = boundary[:, 0], boundary[:, 1]
    shifted = _alpha(
        _reindex(px, s_begin, t_begin, reverse=False),
        _reindex(py, s_begin, t_begin, reverse=False),
        modified,
    )
    return _reindex(shifted, -s_begin, -t_begin, reverse=False)


def _backward_scores(px: Tensor, py: Tensor, boundary: Tensor, modified: bool) -> Tensor:
    """beta (B, S+1, T+1): log-sum of all partial paths from each cell to the utterance's end.

    The reversed lattice ``px'[i, j] = px[s_end-1-i, t_end-j]`` (``t_end-1-j`` when modified),
    ``py'[i, j] = py[s_end-i, t_end-1-j]`` satisfies the forward recursion, so beta is the forward
    recursion on it, read back in reverse.
    """
    s_end, t_end = boundary[:, 2], boundary[:, 3]
    px_t_end = t_end - 1 if modified else t_end
    reversed_alpha = _alpha(
        _reindex(px, s_end - 1, px_t_end, reverse=True),
        _reindex(py, s_end, t_end - 1, reverse=True),
        modified,
    )
    return _reindex(reversed_alpha, s_end, t_end, reverse=True)


def _outside_box(boundary: Tensor, S: int, T: int) -> Tensor:
    """(B, S+1, T+1) bool: cell (s, t) lies outside [s_begin, s_end] x [t_begin, t_end]."""
    rows = torch.arange(S + 1, device=boundary.device).view(1, -1)
    cols = torch.arange(T + 1, device=boundary.device).view(1, -1)
    row_out = (rows < boundary[:, 0:1]) | (rows > boundary[:, 2:3])
    col_out = (cols < boundary[:, 1:2]) | (cols > boundary[:, 3:4])
    return row_out.unsqueeze(2) | col_out.unsqueeze(1)


def _scores_and_occupation(
    px: Tensor,
    py: Tensor,
    boundary: Optional[Tensor],
    modified: bool,
    starts_at_origin: bool,
    with_grad: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Totals (B,) and, if with_grad, occupation probabilities shaped like px and py."""
    user_boundary = boundary is not None
    if boundary is None:
        boundary = _full_boundary(px, py)
    B = px.shape[0]
    alpha = _forward_scores(px, py, boundary, modified, starts_at_origin)
    batch = torch.arange(B, device=px.device)
    total = alpha[batch, boundary[:, 2], boundary[:, 3]]
    if not with_grad:
        return total, None, None

    beta = _backward_scores(px, py, boundary, modified)
    # An impossible utterance (total = -inf) has -inf on every path, so shifting by 0 gives 0.
    shift = torch.where(torch.isfinite(total), total, torch.zeros_like(total)).view(B, 1, 1)
    T = py.shape[-1]
    if modified:
        px_grad = torch.exp(alpha[:, :-1, :-1] + px + beta[:, 1:, 1:] - shift)
    else:
        px_grad = torch.exp(alpha[:, :-1, :] + px + beta[:, 1:, :] - shift)
    py_grad = torch.exp(alpha[:, :, :-1] + py + beta[:, :, 1:] - shift)
    if user_boundary:
        # A transition gets exactly zero gradient unless both of its cells lie inside the box
        # (whatever lies in the padding, even NaN).
        outside = _outside_box(boundary, px.shape[1], T)
        if modified:
            px_outside = outside[:, :-1, :-1] | outside[:, 1:, 1:]
        else:
            px_outside = outside[:, :-1, :] | outside[:, 1:, :]
        px_grad = px_grad.masked_fill(px_outside, 0.0)
        py_grad = py_grad.masked_fill(outside[:, :, :-1] | outside[:, :, 1:], 0.0)
    return total, px_grad, py_grad


class _MutualInformationFunction(torch.autograd.Function):
    """Autograd wrapper: the occupation probabilities are computed with the scores."""

    @staticmethod
    def forward(
        ctx,
        px: Tensor,
        py: Tensor,
        boundary: Optional[Tensor],
        modified: bool,
        starts_at_origin: bool,
    ):
        with torch.no_grad():
            total, px_grad, py_grad = _scores_and_occupation(
                px.detach(), py.detach(), boundary, modified, starts_at_origin, with_grad=True
            )
        ctx.save_for_backward(px_grad, py_grad)
        ctx.mark_non_differentiable(px_grad, py_grad)
        return total, px_grad, py_grad

    @staticmethod
    def backward(ctx, total_grad: Tensor, _px_grad_grad: Tensor, _py_grad_grad: Tensor):
        px_grad, py_grad = ctx.saved_tensors
        scale = total_grad.view(-1, 1, 1)
        return px_grad * scale, py_grad * scale, None, None, None


def mutual_information_recursion(
    px: Tensor,
    py: Tensor,
    boundary: Optional[Tensor] = None,
    return_grad: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """Total log-probability of all monotonic paths through a 2-D lattice (k2's recursion).

    Args:
      px: (B, S, T+1) for the regular topology, (B, S, T) for the modified one: log-probs of
        moving along s (emitting a symbol).
      py: (B, S+1, T): log-probs of moving along t (emitting blank / next frame).
      boundary: optional int64 (B, 4) ``[s_begin, t_begin, s_end, t_end]``; default
        ``[0, 0, S, T]`` for every utterance.
      return_grad: also return ``(px_grad, py_grad)``, the derivatives of ``scores.sum()``
        with respect to px and py, i.e. the occupation probabilities of each transition.
    Returns:
      scores: (B,) with ``scores[b] = p[b, s_end, t_end]`` (-inf where no path exists), or
      ``(scores, (px_grad, py_grad))`` when return_grad is True (grads shaped like px and py,
      zero for utterances without a path).
    """
    modified, starts_at_origin = _check_inputs(px, py, boundary)
    px, py = px.contiguous(), py.contiguous()
    if boundary is not None:
        boundary = boundary.to(px.device)
    needs_autograd = torch.is_grad_enabled() and (px.requires_grad or py.requires_grad)
    if needs_autograd:
        scores, px_grad, py_grad = _MutualInformationFunction.apply(
            px, py, boundary, modified, starts_at_origin
        )
    else:
        scores, px_grad, py_grad = _scores_and_occupation(
            px, py, boundary, modified, starts_at_origin, return_grad
        )
    if return_grad:
        return scores, (px_grad, py_grad)
    return scores
