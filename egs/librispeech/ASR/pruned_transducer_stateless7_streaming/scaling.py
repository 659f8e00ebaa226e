"""Building blocks of the Zipformer v1 encoder,
as in icefall's ``pruned_transducer_stateless7/scaling.py``.

Most modules here are the identity in the forward pass and only change gradients during
training (``ActivationBalancer``, ``Whiten``, ``with_loss``/``penalize_abs_values_gt``); they act
only when their input requires grad, and never under ``torch.jit`` scripting or tracing, so
inference and export see plain tensors. ``DoubleSwish`` and ``softmax`` compute the ordinary
functions; in eager training they use autograd functions that save less memory.

State_dict names match icefall: an ``ActivationBalancer`` owns an int64 ``count`` buffer,
``BasicNorm`` owns the learned log-epsilon ``eps``.
"""

import logging
import random
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor


def _no_op(x: Tensor) -> Tensor:
    """Return ``x`` as a new view, so autograd treats the result as a distinct tensor."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return x
    return x.chunk(1, dim=-1)[0]


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Write ``batch_count`` into every sub-module that has that attribute.

    The Zipformer's warm-up schedules (layer drop, dynamic dropout, bypass-scale clamping,
    skip dropout) read it. A ``DistributedDataParallel`` wrapper is looked through.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    for module in model.modules():
        if hasattr(module, "batch_count"):
            module.batch_count = batch_count


# --------------------------------------------------------------------------------------------
# Linear layers with a scaled-down initialisation.
# --------------------------------------------------------------------------------------------


def _scale_initial_parameters(module: nn.Module, initial_scale: float) -> None:
    with torch.no_grad():
        module.weight.mul_(initial_scale)
        if module.bias is not None:
            nn.init.uniform_(module.bias, -0.1 * initial_scale, 0.1 * initial_scale)


def ScaledLinear(*args, initial_scale: float = 1.0, **kwargs) -> nn.Linear:
    """``nn.Linear`` whose weight is multiplied by ``initial_scale`` at construction and whose
    bias is drawn from U(-0.1 * initial_scale, 0.1 * initial_scale). A plain ``nn.Linear``
    afterwards (same state_dict)."""
    linear = nn.Linear(*args, **kwargs)
    _scale_initial_parameters(linear, initial_scale)
    return linear


def ScaledConv1d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv1d:
    """``nn.Conv1d`` with the initialisation of :func:`ScaledLinear`."""
    conv = nn.Conv1d(*args, **kwargs)
    _scale_initial_parameters(conv, initial_scale)
    return conv


def ScaledConv2d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv2d:
    """``nn.Conv2d`` with the initialisation of :func:`ScaledLinear`."""
    conv = nn.Conv2d(*args, **kwargs)
    _scale_initial_parameters(conv, initial_scale)
    return conv


class Identity(nn.Module):
    """Returns its input; used as a named hook point for diagnostics."""

    def forward(self, x: Tensor) -> Tensor:
        return _no_op(x)


# --------------------------------------------------------------------------------------------
# BasicNorm
# --------------------------------------------------------------------------------------------


class BasicNorm(nn.Module):
    """RMS normalisation with a learned "epsilon" and no gain or bias.

    ``y = x * (mean(x**2, channel_dim) + exp(eps)) ** -0.5``. The parameter ``eps`` holds
    log(epsilon); in training, with probability 0.25, it is clamped to [eps_min, eps_max]
    so that it drifts back if it leaves that range.

    Args:
      num_channels: size of ``x`` along ``channel_dim``.
      channel_dim: the channel axis (negative counts from the end).
      eps: initial epsilon (not its log).
      learn_eps: whether ``eps`` is a parameter (else a buffer).
      eps_min, eps_max: the clamping range of log(epsilon).
    """

    def __init__(
        self,
        num_channels: int,
        channel_dim: int = -1,
        eps: float = 0.25,
        learn_eps: bool = True,
        eps_min: float = -3.0,
        eps_max: float = 3.0,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        log_eps = torch.tensor(eps).log().detach()
        if learn_eps:
            self.eps = nn.Parameter(log_eps)
        else:
            self.register_buffer("eps", log_eps)
        self.eps_min = eps_min
        self.eps_max = eps_max

    def forward(self, x: Tensor) -> Tensor:
        """x: any shape with ``num_channels`` on ``channel_dim``; returns the same shape."""
        if x.shape[self.channel_dim] != self.num_channels:
            raise ValueError(
                f"BasicNorm expects {self.num_channels} channels on dim {self.channel_dim}, "
                f"got shape {list(x.shape)}"
            )
        eps = self.eps
        if not torch.jit.is_scripting():
            if self.training and random.random() < 0.25:
                eps = eps.clamp(min=self.eps_min, max=self.eps_max)
        scales = (torch.mean(x**2, dim=self.channel_dim, keepdim=True) + eps.exp()) ** -0.5
        return x * scales


# --------------------------------------------------------------------------------------------
# ActivationBalancer
# --------------------------------------------------------------------------------------------


def _reduce_dims(ndim: int, channel_dim: int) -> Tuple[int, ...]:
    return tuple(d for d in range(ndim) if d != channel_dim)


def _compute_sign_factor(
    x_positive: Tensor,
    channel_dim: int,
    min_positive: float,
    max_positive: float,
    gain_factor: float,
    max_factor: float,
) -> Tensor:
    """Per-channel factor (C,) pushing the proportion of positive values (``x_positive`` is
    ``x > 0``) into [min_positive, max_positive]: positive when too few are positive, negative
    when too many."""
    proportion_positive = torch.mean(
        x_positive.to(torch.float32), dim=_reduce_dims(x_positive.ndim, channel_dim)
    )
    factor = torch.zeros_like(proportion_positive)
    if min_positive != 0.0:
        too_few = (min_positive - proportion_positive) * (gain_factor / min_positive)
        factor = factor + too_few.clamp(min=0.0, max=max_factor)
    if max_positive != 1.0:
        too_many = (proportion_positive - max_positive) * (gain_factor / (1.0 - max_positive))
        factor = factor - too_many.clamp(min=0.0, max=max_factor)
    return factor


def _compute_scale_factor(
    x: Tensor,
    channel_dim: int,
    min_abs: float,
    max_abs: float,
    gain_factor: float,
    max_factor: float,
) -> Tensor:
    """Per-channel factor (C,) pushing mean |x| into [min_abs, max_abs]: positive when the
    magnitude is too small, negative when it is too large."""
    abs_mean = torch.mean(x.abs(), dim=_reduce_dims(x.ndim, channel_dim)).to(torch.float32)
    factor = -((abs_mean - max_abs) * (gain_factor / max_abs)).clamp(min=0.0, max=max_factor)
    if min_abs != 0.0:
        factor = factor + ((min_abs - abs_mean) * (gain_factor / min_abs)).clamp(
            min=0.0, max=max_factor
        )
    return factor


class ActivationBalancerFunction(torch.autograd.Function):
    """Identity in forward; backward returns ``g - |g| * (sign_factor + scale_factor *
    (1[x > 0] - 0.5))`` with the per-channel factors broadcast along ``channel_dim``.

    ``x_positive`` is ``x > 0`` (computed once by the caller, which also needs it for the
    sign factor). Backward selects one of two per-channel factors with ``where`` and applies
    them with one ``addcmul``, so it makes three passes over the gradient.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        x_positive: Tensor,
        scale_factor: Tensor,
        sign_factor: Optional[Tensor],
        channel_dim: int,
    ) -> Tensor:
        if channel_dim < 0:
            channel_dim += x.ndim
        shape = scale_factor.shape + (1,) * (x.ndim - 1 - channel_dim)
        base = sign_factor if sign_factor is not None else torch.zeros_like(scale_factor)
        factor_if_positive = (base + 0.5 * scale_factor).reshape(shape)
        factor_if_negative = (base - 0.5 * scale_factor).reshape(shape)
        ctx.save_for_backward(x_positive, factor_if_positive, factor_if_negative)
        return x

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        x_positive, factor_if_positive, factor_if_negative = ctx.saved_tensors
        factor = torch.where(
            x_positive,
            factor_if_positive.to(x_grad.dtype),
            factor_if_negative.to(x_grad.dtype),
        )
        return torch.addcmul(x_grad, x_grad.abs(), factor, value=-1.0), None, None, None, None


class ActivationBalancer(nn.Module):
    """Identity in forward; in backward nudges each channel's statistics into range.

    With probability ``max(min_prob, 0.5 ** (1 + count / 4000))`` per call, the gradient is
    modified so that the proportion of positive values per channel moves into
    [min_positive, max_positive] and the mean absolute value into [min_abs, max_abs]
    (gains divided by that probability, each factor at most ``max_factor``). Acts only when
    ``x.requires_grad``; a no-op under no_grad, scripting and tracing.

    Args:
      num_channels: size of the channel axis.
      channel_dim: the channel axis (negative counts from the end).
      min_positive, max_positive: allowed proportion of positive values per channel.
      max_factor: largest relative gradient change.
      sign_gain_factor, scale_gain_factor: gains of the two constraints.
      min_abs, max_abs: allowed mean absolute value per channel.
      min_prob: floor of the probability of acting.
    """

    def __init__(
        self,
        num_channels: int,
        channel_dim: int,
        min_positive: float = 0.05,
        max_positive: float = 0.95,
        max_factor: float = 0.04,
        sign_gain_factor: float = 0.01,
        scale_gain_factor: float = 0.02,
        min_abs: float = 0.2,
        max_abs: float = 100.0,
        min_prob: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.min_positive = min_positive
        self.max_positive = max_positive
        self.max_factor = max_factor
        self.min_abs = min_abs
        self.max_abs = max_abs
        self.min_prob = min_prob
        self.sign_gain_factor = sign_gain_factor
        self.scale_gain_factor = scale_gain_factor
        # Python-side call counter; synced now and then to the `count` buffer so that it is
        # saved with checkpoints without a device sync on every call.
        self.cpu_count = 0
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing() or not x.requires_grad:
            return _no_op(x)
        count = self.cpu_count
        self.cpu_count += 1
        if random.random() < 0.01:
            self.cpu_count = max(self.cpu_count, int(self.count.item()))
            self.count.fill_(self.cpu_count)
        prob = max(self.min_prob, 0.5 ** (1 + count / 4000.0))
        if random.random() >= prob:
            return _no_op(x)
        channel_dim = self.channel_dim if self.channel_dim >= 0 else self.channel_dim + x.ndim
        x_detached = x.detach()
        x_positive = x_detached > 0
        sign_factor = None
        if self.min_positive != 0.0 or self.max_positive != 1.0:
            sign_factor = _compute_sign_factor(
                x_positive,
                channel_dim,
                self.min_positive,
                self.max_positive,
                gain_factor=self.sign_gain_factor / prob,
                max_factor=self.max_factor,
            )
        scale_factor = _compute_scale_factor(
            x_detached,
            channel_dim,
            self.min_abs,
            self.max_abs,
            gain_factor=self.scale_gain_factor / prob,
            max_factor=self.max_factor,
        )
        return ActivationBalancerFunction.apply(
            x, x_positive, scale_factor, sign_factor, channel_dim
        )


# --------------------------------------------------------------------------------------------
# Whiten
# --------------------------------------------------------------------------------------------


def _whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """How far the covariance of ``x`` (..., C) is from a multiple of the identity.

    Channels are split into ``num_groups`` groups; the metric is
    ``(sum(cov**2) / C) / mean(diag(cov))**2`` averaged over groups, which is 1 for white
    features and grows as the covariance becomes less isotropic. Returns a scalar.
    """
    x = x.reshape(-1, x.shape[-1])
    num_frames, num_channels = x.shape
    channels_per_group = num_channels // num_groups
    x = x.reshape(num_frames, num_groups, channels_per_group).transpose(0, 1)
    x = x - x.mean(dim=1, keepdim=True)
    covar = torch.matmul(x.transpose(1, 2), x)
    mean_diag = covar.diagonal(dim1=1, dim2=2).mean()
    mean_square = (covar**2).sum() / (num_groups * channels_per_group)
    return mean_square / (mean_diag**2 + 1.0e-20)


class WhiteningPenaltyFunction(torch.autograd.Function):
    """Identity in forward; backward adds the (rescaled) gradient of
    ``relu(whitening_metric(x) - limit)`` to the incoming gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, num_groups: int, whitening_limit: float, grad_scale: float):
        ctx.save_for_backward(x)
        ctx.num_groups = num_groups
        ctx.whitening_limit = whitening_limit
        ctx.grad_scale = grad_scale
        return x

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x_orig,) = ctx.saved_tensors
        with torch.enable_grad(), torch.autocast(x_orig.device.type, enabled=False):
            x_detached = x_orig.to(torch.float32).detach().requires_grad_(True)
            metric = _whitening_metric(x_detached, ctx.num_groups)
            if random.random() < 0.005:
                logging.info(
                    f"Whitening: num_groups={ctx.num_groups}, num_channels={x_orig.shape[-1]}, "
                    f"metric={metric.item():.2f} vs. limit={ctx.whitening_limit}"
                )
            (metric - ctx.whitening_limit).relu().backward()
            penalty_grad = x_detached.grad
            scale = ctx.grad_scale * (
                x_grad.to(torch.float32).norm() / (penalty_grad.norm() + 1.0e-20)
            )
            penalty_grad = penalty_grad * scale
        return x_grad + penalty_grad.to(x_grad.dtype), None, None, None


class Whiten(nn.Module):
    """Identity in forward; in backward discourages a non-white covariance of ``x``.

    Applied with probability ``prob`` per call (when ``prob`` is a (min, max) pair, it switches
    to max while the metric exceeds ``whitening_limit`` and to min otherwise, re-checked on a
    quarter of the calls). No-op unless ``x.requires_grad``.

    Args:
      num_groups: channel groups whose covariances are whitened separately.
      whitening_limit: metric value above which the penalty starts.
      prob: probability of acting, or a (min_prob, max_prob) pair.
      grad_scale: size of the penalty gradient relative to the incoming gradient norm.
    """

    def __init__(
        self,
        num_groups: int,
        whitening_limit: float,
        prob: Union[float, Tuple[float, float]],
        grad_scale: float,
    ) -> None:
        super().__init__()
        if num_groups < 1 or whitening_limit < 1 or grad_scale < 0:
            raise ValueError(
                f"bad Whiten arguments: num_groups={num_groups}, "
                f"whitening_limit={whitening_limit}, grad_scale={grad_scale}"
            )
        self.num_groups = num_groups
        self.whitening_limit = whitening_limit
        if isinstance(prob, float):
            self.min_prob = prob
            self.max_prob = prob
        else:
            self.min_prob, self.max_prob = prob
        self.prob = self.max_prob
        self.grad_scale = grad_scale

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return x
        if not x.requires_grad or self.grad_scale == 0 or random.random() > self.prob:
            return _no_op(x)
        if self.min_prob != self.max_prob and random.random() < 0.25:
            with torch.no_grad():
                metric = _whitening_metric(x.detach().to(torch.float32), self.num_groups)
            self.prob = self.max_prob if metric > self.whitening_limit else self.min_prob
        return WhiteningPenaltyFunction.apply(
            x, self.num_groups, self.whitening_limit, self.grad_scale
        )


# --------------------------------------------------------------------------------------------
# Auxiliary losses
# --------------------------------------------------------------------------------------------


class WithLoss(torch.autograd.Function):
    """Returns ``x``; in backward, ``y`` receives a gradient of ones (as if ``y.sum()`` had been
    added to the loss)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, name: Optional[str]):
        ctx.y_shape = y.shape
        if name is not None and random.random() < 0.002:
            logging.info(f"WithLoss: name={name}, loss-sum={y.sum().item():.3e}")
        return x

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        y_grad = torch.ones(ctx.y_shape, dtype=ans_grad.dtype, device=ans_grad.device)
        return ans_grad, y_grad, None


def with_loss(x: Tensor, y: Tensor, name: Optional[str] = None) -> Tensor:
    """Return ``x`` unchanged, adding ``y.sum()`` to whatever loss is backpropagated through it."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return x
    return WithLoss.apply(x, y, name)


def penalize_abs_values_gt(
    x: Tensor, limit: float, penalty: float, name: Optional[str] = None
) -> Tensor:
    """Return ``x`` unchanged, adding ``penalty * sum(|x| where |x| > limit)`` to the loss."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return x
    over_limit = (x.abs() - limit) > 0
    sign_over_limit = (x.sign() * over_limit).to(torch.int8)
    aux_loss = penalty * (sign_over_limit * x)
    return with_loss(x, aux_loss, name)


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------

_DERIV_FLOOR = -0.043637  # just below min over x of d/dx [x * sigmoid(x - 1)]
_DERIV_CEIL = 1.2  # just above its max


class DoubleSwishFunction(torch.autograd.Function):
    """``x * sigmoid(x - 1)``; on CUDA saving only an 8-bit stochastically rounded derivative.

    On CUDA (icefall's behaviour, for memory) the derivative ``y * (1 - s) + s``
    (s = sigmoid(x - 1)) lies in [_DERIV_FLOOR, _DERIV_CEIL]; it is mapped to [0, 255] with
    uniform noise added before truncation, so the stored value is unbiased. On CPU, where each
    elementwise pass over a large activation is what costs (8 passes and a random draw for the
    quantisation), ``s`` and ``x`` are saved and the exact derivative is computed in backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        requires_grad = x.requires_grad
        input_dtype = x.dtype
        if input_dtype == torch.float16:
            x = x.to(torch.float32)
        s = torch.sigmoid_(x - 1.0)
        y = x * s
        ctx.quantized = x.is_cuda
        if requires_grad and ctx.quantized:
            deriv = y * (1 - s) + s
            scaled = (deriv - _DERIV_FLOOR) * (255.0 / (_DERIV_CEIL - _DERIV_FLOOR))
            ctx.save_for_backward((scaled + torch.rand_like(deriv)).to(torch.uint8))
        elif requires_grad:
            ctx.save_for_backward(s, x)
        if input_dtype == torch.float16 or torch.is_autocast_enabled():
            y = y.to(torch.float16)
        return y

    @staticmethod
    def backward(ctx, y_grad: Tensor) -> Tensor:
        if ctx.quantized:
            (quantized,) = ctx.saved_tensors
            deriv = quantized * ((_DERIV_CEIL - _DERIV_FLOOR) / 255.0) + _DERIV_FLOOR
            return y_grad * deriv
        s, x = ctx.saved_tensors
        # d/dx [x * s] = s * (1 + x * (1 - s)), computed in place on one temporary.
        deriv = torch.sub(1.0, s).mul_(x).add_(1.0).mul_(s)
        return deriv.mul_(y_grad)


class DoubleSwish(nn.Module):
    """DoubleSwish activation ``x * sigmoid(x - 1)`` (shape preserved)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return x * torch.sigmoid(x - 1.0)
        return DoubleSwishFunction.apply(x)


class SoftmaxFunction(torch.autograd.Function):
    """Softmax that keeps only its (possibly fp16) output for the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        ans = x.softmax(dim=dim)
        if torch.is_autocast_enabled():
            ans = ans.to(torch.float16)
        ctx.save_for_backward(ans)
        ctx.dim = dim
        return ans

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        (ans,) = ctx.saved_tensors
        ans = ans.to(torch.float32)
        x_grad = ans_grad.to(torch.float32) * ans
        x_grad = x_grad - ans * x_grad.sum(dim=ctx.dim, keepdim=True)
        return x_grad, None


def softmax(x: Tensor, dim: int) -> Tensor:
    """``x.softmax(dim)``; eager mode uses the memory-saving :class:`SoftmaxFunction`."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return x.softmax(dim=dim)
    return SoftmaxFunction.apply(x, dim)


class RandomClampFunction(torch.autograd.Function):
    """Clamp each element with probability ``prob``; gradient flows only where unchanged.

    With ``reflect != 0`` the output is ``ans * (1 + reflect) - x * reflect``, which pushes
    clamped values further inside the range.
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        min: Optional[float],
        max: Optional[float],
        prob: float,
        reflect: float,
    ) -> Tensor:
        clamped = torch.clamp(x, min=min, max=max)
        use_clamped = torch.rand_like(x) < prob
        ans = torch.where(use_clamped, clamped, x)
        if x.requires_grad:
            ctx.save_for_backward(ans == x)
            ctx.reflect = reflect
        if reflect != 0.0:
            ans = ans * (1.0 + reflect) - x * reflect
        return ans

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        (unchanged,) = ctx.saved_tensors
        x_grad = ans_grad * unchanged.to(ans_grad.dtype)
        if ctx.reflect != 0.0:
            x_grad = x_grad * (1.0 + ctx.reflect) - ans_grad * ctx.reflect
        return x_grad, None, None, None, None


def random_clamp(
    x: Tensor,
    min: Optional[float] = None,
    max: Optional[float] = None,
    prob: float = 0.5,
    reflect: float = 0.0,
) -> Tensor:
    """Randomly clamp elements of ``x`` to [min, max] (see :class:`RandomClampFunction`)."""
    return RandomClampFunction.apply(x, min, max, prob, reflect)
