"""ScaledAdam optimizer and Eden learning-rate scheduler (icefall's ``optim.py``).

ScaledAdam makes parameter updates proportional to each tensor's root-mean-square value, so one
learning rate suits tensors of every scale, and learns each tensor's overall scale separately
("size update"). Gradients are clipped against ``clipping_scale`` times the median recent
gradient norm. Parameters of identical shape and dtype are stacked and updated as one batch.

Eden decays the learning rate as a function of both the batch and the epoch count::

    lr = base_lr * ((batch^2 + lr_batches^2) / lr_batches^2) ** -0.25
                 * ((epoch^2 + lr_epochs^2) / lr_epochs^2) ** -0.25 * warmup
"""

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer

# A stacked parameter (first dim indexes the stacked tensors), its state and the names.
Batch = Tuple[Tensor, Dict[str, Any], List[str]]


class BatchedOptimizer(Optimizer):
    """Optimizer base class that updates same-shape parameters as one stacked tensor.

    The state of a stack lives in ``self.state[first parameter of the stack]``, so the usual
    ``Optimizer.state_dict()``/``load_state_dict()`` round trip works unchanged.
    """

    @contextlib.contextmanager
    def batched_params(self, params: List[Tensor], names: List[str]) -> Iterator[List[Batch]]:
        """Stack parameters of equal (dtype, shape); copy the stacks back on exit.

        Yields:
          a list of (stacked param (B, *shape) with ``.grad`` set, state dict, B names),
          sorted by (dtype, shape) so the order does not depend on the parameter order.
        """
        groups: Dict[Tuple, List[Tensor]] = defaultdict(list)
        group_names: Dict[Tuple, List[str]] = defaultdict(list)
        for p, name in zip(params, names):
            key = (str(p.dtype), *p.shape)
            groups[key].append(p)
            group_names[key].append(name)

        keys = sorted(groups.keys(), key=str)
        batches: List[Batch] = []
        for key in keys:
            members = groups[key]
            stacked = torch.stack(members)
            stacked.grad = torch.stack(
                [torch.zeros_like(p) if p.grad is None else p.grad for p in members]
            )
            batches.append((stacked, self.state[members[0]], group_names[key]))
        yield batches
        for (stacked, _, _), key in zip(batches, keys):
            for i, p in enumerate(groups[key]):
                p.copy_(stacked[i])


class ScaledAdam(BatchedOptimizer):
    """Adam-like optimizer whose updates scale with the parameter RMS.

    Args:
      params: parameters or parameter groups.
      lr: learning rate (the update RMS relative to the parameter RMS, roughly).
      clipping_scale: if not None, gradients are clipped to ``clipping_scale`` times the median
        of the gradient norms of the last ``clipping_update_period`` steps (from step 100 on).
      betas: momentum and second-moment decay.
      scalar_lr_scale: learning-rate factor for scalar parameters and for size updates.
      eps: added to the Adam denominators.
      param_min_rms: the RMS below which a tensor is not shrunk further (and the floor of the
        RMS used to scale updates).
      param_max_rms: the RMS above which a tensor is shrunk.
      scalar_max: scalar parameters are clamped to [-scalar_max, scalar_max].
      size_update_period: how often (in steps) the tensor scales are updated.
      clipping_update_period: how often (in steps) the clipping threshold is re-estimated.
      parameters_names: one list of names per parameter group (used in clipping logs); default
        ``param<i>``.
      show_dominant_parameters: log which parameter dominates the gradient norm when the
        gradient is scaled by less than 0.1.
    """

    def __init__(
        self,
        params,
        lr: float = 3e-02,
        clipping_scale: Optional[float] = None,
        betas: Tuple[float, float] = (0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1.0e-08,
        param_min_rms: float = 1.0e-05,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 100,
        parameters_names: Optional[List[List[str]]] = None,
        show_dominant_parameters: bool = True,
    ):
        defaults = dict(
            lr=lr,
            clipping_scale=clipping_scale,
            betas=betas,
            scalar_lr_scale=scalar_lr_scale,
            eps=eps,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            scalar_max=scalar_max,
            size_update_period=size_update_period,
            clipping_update_period=clipping_update_period,
        )
        super().__init__(params, defaults)
        if parameters_names is None:
            parameters_names = [
                [f"param{i}" for i in range(len(group["params"]))] for group in self.param_groups
            ]
        if len(parameters_names) != len(self.param_groups) or any(
            len(names) != len(group["params"])
            for names, group in zip(parameters_names, self.param_groups)
        ):
            raise ValueError(
                "parameters_names must hold one list of names per parameter group, "
                "one name per parameter"
            )
        self.parameters_names = parameters_names
        self.show_dominant_parameters = show_dominant_parameters

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimisation step (parameters with no gradient get a zero gradient)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, names in zip(self.param_groups, self.parameters_names):
            with self.batched_params(group["params"], names) as batches:
                first_state = batches[0][1]
                scale = 1.0 if len(first_state) == 0 else self._clipping_scale(group, batches)
                for p, state, _ in batches:
                    if p.grad.is_sparse:
                        raise RuntimeError("ScaledAdam does not support sparse gradients")
                    if len(state) == 0:
                        self._init_state(group, p, state)
                    self._step_one_batch(group, p, state, scale)
        return loss

    @staticmethod
    def _init_state(group: dict, p: Tensor, state: dict) -> None:
        state["step"] = 0
        state["delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if p.numel() // p.shape[0] > 1:
            param_rms = _rms(p)
            state["param_rms"] = param_rms
            state["scale_exp_avg_sq"] = torch.zeros_like(param_rms)
            state["scale_grads"] = torch.zeros(
                group["size_update_period"], *param_rms.shape, dtype=p.dtype, device=p.device
            )
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _clipping_scale(self, group: dict, batches: List[Batch]) -> float:
        """Factor (<= 1) by which to scale all gradients of this group at this step."""
        clipping_scale = group["clipping_scale"]
        first_p, first_state, _ = batches[0]
        step = first_state["step"]
        if clipping_scale is None or step == 0:
            return 1.0
        period = group["clipping_update_period"]
        tot_sumsq = _grad_sumsq(batches).sum()
        tot_norm = tot_sumsq.sqrt()
        if "model_norms" not in first_state:
            first_state["model_norms"] = torch.zeros(period, device=first_p.device)
        first_state["model_norms"][step % period] = tot_norm

        if step % period == 0:
            sorted_norms = first_state["model_norms"].sort()[0].cpu()
            quartiles = [sorted_norms[min(period - 1, (period // 4) * n)].item() for n in range(5)]
            threshold = clipping_scale * quartiles[2]
            first_state["model_norm_threshold"] = threshold
            percent_clipped = first_state.get("num_clipped", 0) * 100.0 / period
            first_state["num_clipped"] = 0
            logging.info(
                f"Clipping_scale={clipping_scale}, grad-norm quartiles "
                f"{' '.join(f'{q:.3e}' for q in quartiles)}, threshold={threshold:.3e}, "
                f"percent-clipped={percent_clipped:.1f}"
            )
        if step < period:
            return 1.0
        if "model_norm_threshold" not in first_state:
            logging.warning("model_norm_threshold missing from the optimizer state: not clipping")
            return 1.0
        threshold = first_state["model_norm_threshold"]
        ans = min(1.0, (threshold / (tot_norm + 1.0e-20)).item())
        if ans < 1.0:
            first_state["num_clipped"] = first_state.get("num_clipped", 0) + 1
        if ans < 0.1:
            logging.warning(f"Scaling gradients by {ans:.3e}, model_norm_threshold={threshold:.3e}")
            if self.show_dominant_parameters:
                self._log_dominant_parameter(batches, tot_sumsq)
        return ans

    @staticmethod
    def _log_dominant_parameter(batches: List[Batch], tot_sumsq: Tensor) -> None:
        """Log the parameter contributing most to the (rms-scaled) gradient norm."""
        contributions: Dict[str, Tuple[float, Tensor]] = {}
        for p, state, names in batches:
            per_param = _grad_sumsq([(p, state, names)], per_param=True)
            for i, name in enumerate(names):
                contributions[name] = (per_param[i].item(), p.grad[i])
        name, (sumsq, grad) = max(contributions.items(), key=lambda item: item[1][0])
        logging.warning(
            f"Parameter dominating tot_sumsq {name} with proportion "
            f"{sumsq / max(tot_sumsq.item(), 1e-20):.2f}, where dominant_sumsq=(grad_sumsq*"
            f"orig_rms_sq)={sumsq:.3e}, grad_sumsq={(grad**2).sum().item():.3e}, "
            f"orig_rms_sq={sumsq / max((grad**2).sum().item(), 1e-20):.3e}"
        )

    def _step_one_batch(self, group: dict, p: Tensor, state: dict, clipping_scale: float) -> None:
        if clipping_scale != 1.0:
            p.grad.mul_(clipping_scale)
        step = state["step"]
        state["delta"].mul_(group["betas"][0])
        if p.numel() // p.shape[0] > 1:
            period = group["size_update_period"]
            dims = list(range(1, p.ndim))
            state["scale_grads"][step % period] = (p * p.grad).sum(dim=dims, keepdim=True)
            if step % period == period - 1:
                state["param_rms"].copy_(_rms(p))
                if step > 0:
                    self._size_update(group, p, state)
            self._step_tensor(group, p, state)
        else:
            self._step_scalar(group, p, state)
        state["step"] = step + 1

    @staticmethod
    def _size_update(group: dict, p: Tensor, state: dict) -> None:
        """Learn the overall scale of each stacked tensor (adds to ``delta``)."""
        beta1, beta2 = group["betas"]
        size_lr = group["lr"] * group["scalar_lr_scale"]
        scale_grads = state["scale_grads"]  # (period, B, 1, 1, ...)
        period = scale_grads.shape[0]
        beta2_corr = beta2**period
        scale_exp_avg_sq = state["scale_exp_avg_sq"]
        scale_exp_avg_sq.mul_(beta2_corr).add_((scale_grads**2).mean(dim=0), alpha=1 - beta2_corr)
        size_step = (state["step"] + 1) // period
        bias_correction2 = 1 - beta2_corr**size_step
        denom = scale_exp_avg_sq.sqrt() + group["eps"]
        scale_step = -size_lr * (bias_correction2**0.5) * scale_grads.sum(dim=0) / denom
        param_rms = state["param_rms"]
        scale_step.masked_fill_(param_rms < group["param_min_rms"], 0.0)
        scale_step.masked_fill_(param_rms > group["param_max_rms"], -size_lr * period)
        state["delta"].add_(p * scale_step, alpha=1 - beta1)

    @staticmethod
    def _step_tensor(group: dict, p: Tensor, state: dict) -> None:
        """Adam step on non-scalar tensors, scaled by the tensor's RMS."""
        beta1, beta2 = group["betas"]
        grad = p.grad
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2 = 1 - beta2 ** (state["step"] + 1)
        if bias_correction2 < 0.99:
            exp_avg_sq = exp_avg_sq * (1.0 / bias_correction2)
        denom = exp_avg_sq.sqrt() + group["eps"]
        alpha = -group["lr"] * (1 - beta1) * state["param_rms"].clamp(min=group["param_min_rms"])
        delta = state["delta"]
        delta.add_(grad / denom * alpha)
        p.add_(delta)

    @staticmethod
    def _step_scalar(group: dict, p: Tensor, state: dict) -> None:
        """Plain Adam (no first-moment bias correction) for scalar parameters."""
        beta1, beta2 = group["betas"]
        lr = group["lr"] * group["scalar_lr_scale"]
        grad = p.grad
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2 = 1 - beta2 ** (state["step"] + 1)
        denom = (exp_avg_sq / bias_correction2).sqrt() + group["eps"]
        delta = state["delta"]
        delta.add_(grad / denom, alpha=-lr * (1 - beta1))
        p.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
        p.add_(delta)


def _rms(p: Tensor) -> Tensor:
    """RMS over all but the first (stacking) dim: (B, *shape) -> (B, 1, 1, ...)."""
    return (p**2).mean(dim=list(range(1, p.ndim)), keepdim=True).sqrt()


def _grad_sumsq(batches: List[Batch], per_param: bool = False) -> Tensor:
    """Squared gradient norm with non-scalar gradients scaled by their tensor's RMS.

    Returns a (num_batches,) tensor of sums, or (B,) per stacked parameter when ``per_param``.
    """
    sums = []
    for p, state, _ in batches:
        grad = p.grad
        if p.numel() != p.shape[0]:
            grad = grad * state["param_rms"]
        sq = (grad**2).reshape(p.shape[0], -1).sum(dim=1)
        sums.append(sq if per_param else sq.sum())
    return torch.cat(sums) if per_param else torch.stack(sums)


class LRScheduler:
    """Base class of batch- and epoch-driven schedulers (not torch's LRScheduler).

    ``state_dict()`` is ``{"base_lrs", "epoch", "batch"}``.
    """

    def __init__(self, optimizer: Optimizer, verbose: bool = False):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        self.verbose = verbose
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs = [group["base_lr"] for group in optimizer.param_groups]
        self.epoch = 0
        self.batch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        return {"base_lrs": self.base_lrs, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.base_lrs = list(state_dict["base_lrs"])
        self.epoch = state_dict["epoch"]
        self.batch = state_dict["batch"]
        self._set_lrs()

    def get_last_lr(self) -> List[float]:
        """The learning rates the optimizer currently uses, one per parameter group."""
        return self._last_lr

    def get_lr(self) -> List[float]:
        raise NotImplementedError

    def step_batch(self, batch: Optional[int] = None) -> None:
        """Set the batch count (default: increment it) and update the learning rates."""
        self.batch = self.batch + 1 if batch is None else batch
        self._set_lrs()

    def step_epoch(self, epoch: Optional[int] = None) -> None:
        """Set the epoch count (default: increment it); call at the start of each epoch."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._set_lrs()

    def _set_lrs(self) -> None:
        values = self.get_lr()
        assert len(values) == len(self.optimizer.param_groups)
        for i, (group, lr) in enumerate(zip(self.optimizer.param_groups, values)):
            group["lr"] = lr
            if self.verbose:
                logging.info(f"Epoch={self.epoch}, batch={self.batch}: lr of group {i} = {lr:.4e}")
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class Eden(LRScheduler):
    """Eden schedule: inverse fourth-root decay in both batches and epochs, with warm-up.

    Args:
      optimizer: the optimizer whose ``lr`` is set (its initial lr becomes ``base_lr``).
      lr_batches: batch count at which the batch factor is 2^-0.25 (~5000 for LibriSpeech).
      lr_epochs: epoch count at which the epoch factor is 2^-0.25 (~3.5).
      warmup_batches: the lr rises linearly from ``warmup_start`` to 1 over this many batches.
      warmup_start: the warm-up factor at batch 0 (0.5 in icefall's v7 recipes).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_batches: float,
        lr_epochs: float,
        warmup_batches: float = 500.0,
        warmup_start: float = 0.5,
        verbose: bool = False,
    ):
        super().__init__(optimizer, verbose)
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        self.warmup_batches = warmup_batches
        self.warmup_start = warmup_start

    def get_lr(self) -> List[float]:
        factor = ((self.batch**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25 * (
            ((self.epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        )
        if self.batch >= self.warmup_batches:
            warmup = 1.0
        else:
            warmup = (
                self.warmup_start + (1.0 - self.warmup_start) * self.batch / self.warmup_batches
            )
        return [base_lr * factor * warmup for base_lr in self.base_lrs]
