"""Saving, loading and averaging checkpoints (icefall's API and file layout).

A checkpoint is a dict::

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "grad_scaler": ...,
     "sampler": ..., "model_avg": float32 state_dict (optional), **params}

so icefall checkpoints load here and the other way round. Two differences from icefall:

- saving is atomic: the dict is written to a temporary file in the same directory, flushed to
  disk and renamed over the target, so a process killed while saving never leaves a truncated
  ``epoch-N.pt`` (the previous file, if any, stays intact);
- saving writes a float32 copy of ``model_avg`` and leaves the running float64 averaged model
  untouched.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

Pathlike = Union[str, Path]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


def _float32_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model.state_dict()`` with floating tensors as float32; ``model`` is unchanged.

    Tied tensors stay tied in the copy.
    """
    copies: dict[tuple, torch.Tensor] = {}
    ans = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.stride(), tensor.dtype)
        if key not in copies or tensor.numel() == 0:
            dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
            copies[key] = tensor.detach().to(dtype, copy=True)
        ans[name] = copies[key]
    return ans


def atomic_torch_save(obj: Any, filename: Pathlike) -> None:
    """``torch.save(obj, filename)`` that either fully replaces ``filename`` or leaves it as it was.

    Writes to a temporary file in the same directory, fsyncs it, then ``os.replace``s it over
    ``filename`` (atomic on POSIX and Windows file systems). Temporary files of earlier saves of
    ``filename`` that were killed are removed afterwards.
    """
    filename = Path(filename)
    filename.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = filename.parent / f".{filename.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    # Unlike tempfile.mkstemp (mode 0600), this gives the file torch.save's usual permissions.
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, filename)
    except BaseException:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        raise
    _fsync_directory(filename.parent)
    _remove_stale_temporary_files(filename)


def _remove_stale_temporary_files(filename: Path) -> None:
    """Delete temporary files left by earlier saves of ``filename`` that were killed."""
    for stale in filename.parent.glob(f".{glob.escape(filename.name)}.*.tmp"):
        try:
            stale.unlink()
        except OSError as e:
            logging.warning(f"Could not remove the stale temporary file {stale}: {e}")


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort; not supported everywhere)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    filename: Pathlike,
    model: nn.Module,
    model_avg: Optional[nn.Module] = None,
    params: Optional[dict[str, Any]] = None,
    optimizer: Optional[Any] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    sampler: Optional[Any] = None,
    rank: int = 0,
) -> None:
    """Save a training checkpoint atomically (only on rank 0).

    Args:
      filename: output file, e.g. ``exp_dir/epoch-3.pt``.
      model: the model (a DDP wrapper is unwrapped).
      model_avg: the running averaged model; a float32 copy of its state is stored.
      params: merged into the top level of the dict (keys must not clash with the fixed keys).
      optimizer, scheduler, scaler, sampler: anything with ``state_dict()``; stored under
        ``optimizer``, ``scheduler``, ``grad_scaler`` and ``sampler`` (None when absent).
      rank: the DDP rank; other ranks return without writing.
    """
    if rank != 0:
        return
    logging.info(f"Saving checkpoint to {filename}")
    checkpoint: dict[str, Any] = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "sampler": sampler.state_dict() if sampler is not None else None,
    }
    if model_avg is not None:
        checkpoint["model_avg"] = _float32_state_dict(_unwrap(model_avg))
    if params:
        for key, value in params.items():
            if key in checkpoint:
                raise ValueError(f"params key '{key}' clashes with a checkpoint key")
            checkpoint[key] = value
    atomic_torch_save(checkpoint, filename)


def _strip_ddp_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix DDP adds, if every key has it."""
    prefix = "module."
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def _load_state(
    model: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool, description: str
) -> None:
    """Load a (maybe DDP-prefixed) state dict; with ``strict=False`` warn about key mismatches."""
    result = _unwrap(model).load_state_dict(_strip_ddp_prefix(state_dict), strict=strict)
    for kind, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)):
        if keys:
            logging.warning(f"{description}: {len(keys)} {kind} keys: {keys}")


def load_checkpoint(
    filename: Pathlike,
    model: nn.Module,
    model_avg: Optional[nn.Module] = None,
    optimizer: Optional[Any] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    sampler: Optional[Any] = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (or by icefall).

    The model state may come from a plain or a DDP (``module.``-prefixed) model. Each optional
    object is restored when both it and its saved state exist.

    Returns:
      The remaining entries of the checkpoint (the saved params, e.g. ``batch_idx_train``).
    """
    logging.info(f"Loading checkpoint from {filename}")
    if not Path(filename).is_file():
        raise FileNotFoundError(f"Checkpoint not found: {filename}")
    checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{filename} is not a checkpoint: it has no 'model' entry")

    _load_state(model, checkpoint.pop("model"), strict, f"{filename}: model")
    saved_avg = checkpoint.pop("model_avg", None)
    if model_avg is not None and saved_avg is not None:
        _load_state(model_avg, saved_avg, strict, f"{filename}: model_avg")

    for key, obj in (
        ("optimizer", optimizer),
        ("scheduler", scheduler),
        ("grad_scaler", scaler),
        ("sampler", sampler),
    ):
        state = checkpoint.pop(key, None)
        if obj is not None and state:
            obj.load_state_dict(state)
    return checkpoint


def save_checkpoint_with_global_batch_idx(
    out_dir: Pathlike,
    global_batch_idx: int,
    model: nn.Module,
    model_avg: Optional[nn.Module] = None,
    params: Optional[dict[str, Any]] = None,
    optimizer: Optional[Any] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    sampler: Optional[Any] = None,
    rank: int = 0,
) -> None:
    """Save ``out_dir/checkpoint-{global_batch_idx}.pt`` (see :func:`save_checkpoint`)."""
    save_checkpoint(
        filename=Path(out_dir) / f"checkpoint-{global_batch_idx}.pt",
        model=model,
        model_avg=model_avg,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        sampler=sampler,
        rank=rank,
    )


def find_checkpoints(out_dir: Pathlike, iteration: int = 0) -> list[str]:
    """Paths of ``out_dir/checkpoint-N.pt``, highest N first.

    Args:
      iteration: if > 0 keep only N >= iteration; if < 0 keep only N <= -iteration.
    """
    numbered = []
    for path in Path(out_dir).glob("checkpoint-[0-9]*.pt"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            numbered.append((int(match.group(1)), str(path)))
    numbered.sort(reverse=True)
    if iteration > 0:
        numbered = [(n, p) for n, p in numbered if n >= iteration]
    elif iteration < 0:
        numbered = [(n, p) for n, p in numbered if n <= -iteration]
    return [path for _, path in numbered]


def remove_checkpoints(out_dir: Pathlike, topk: int, rank: int = 0) -> None:
    """Delete all but the ``topk`` highest-numbered ``checkpoint-N.pt`` in ``out_dir`` (rank 0)."""
    if rank != 0:
        return
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    for path in find_checkpoints(out_dir)[topk:]:
        os.remove(path)


def _unique_tensor_names(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of tensors with distinct storage (tied weights appear once)."""
    seen: set[int] = set()
    names = []
    for name, tensor in state_dict.items():
        if tensor.numel() == 0:
            continue
        pointer = tensor.data_ptr()
        if pointer not in seen:
            seen.add(pointer)
            names.append(name)
    return names


def _load_model_state(filename: Pathlike, device: torch.device) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(filename, map_location=device, weights_only=False)
    return _strip_ddp_prefix(checkpoint["model"])


def average_checkpoints(
    filenames: list[Pathlike], device: Union[str, torch.device] = "cpu"
) -> dict[str, torch.Tensor]:
    """Arithmetic mean of the ``model`` states in ``filenames``.

    Floating tensors are averaged; integer tensors are summed and floor-divided; other tensors
    (bool) keep the value of the first file. Tied tensors are averaged once.
    """
    if not filenames:
        raise ValueError("average_checkpoints needs at least one file")
    num = len(filenames)
    avg = _load_model_state(filenames[0], device)
    names = [n for n in _unique_tensor_names(avg) if avg[n].dtype != torch.bool]
    for filename in filenames[1:]:
        state = _load_model_state(filename, device)
        for name in names:
            avg[name] += state[name]
    for name in names:
        if avg[name].is_floating_point():
            avg[name] /= num
        else:
            avg[name] //= num
    return avg


def average_state_dict(
    state_dict_1: dict[str, torch.Tensor],
    state_dict_2: dict[str, torch.Tensor],
    weight_1: float,
    weight_2: float,
    scaling_factor: float = 1.0,
) -> None:
    """In place: ``state_dict_1 = (state_dict_1 * weight_1 + state_dict_2 * weight_2) * scaling``.

    Only floating tensors are changed; tied tensors are updated once.
    """
    for name in _unique_tensor_names(state_dict_1):
        tensor = state_dict_1[name]
        if not tensor.is_floating_point():
            continue
        tensor *= weight_1
        tensor += state_dict_2[name].to(device=tensor.device, dtype=tensor.dtype) * weight_2
        if scaling_factor != 1.0:
            tensor *= scaling_factor


def update_averaged_model(
    params: dict[str, Any], model_cur: nn.Module, model_avg: nn.Module
) -> None:
    """Fold the current model into the running average (called every ``average_period`` batches).

    ``model_avg = model_avg * (1 - w) + model_cur * w`` with
    ``w = params["average_period"] / params["batch_idx_train"]``, so that after the update at
    batch ``k * average_period`` ``model_avg`` is the mean of the k snapshots taken so far.
    """
    average_period = params["average_period"]
    batch_idx_train = params["batch_idx_train"]
    if batch_idx_train <= 0:
        raise ValueError(f"batch_idx_train must be positive, got {batch_idx_train}")
    weight_cur = average_period / batch_idx_train
    average_state_dict(
        state_dict_1=_unwrap(model_avg).state_dict(),
        state_dict_2=_unwrap(model_cur).state_dict(),
        weight_1=1 - weight_cur,
        weight_2=weight_cur,
    )


def average_checkpoints_with_averaged_model(
    filename_start: Pathlike,
    filename_end: Pathlike,
    device: Union[str, torch.device] = "cpu",
) -> dict[str, torch.Tensor]:
    """The average of the model over the batches in (start, end] from two ``model_avg`` states.

    With ``avg_b`` the running average at batch b (rounded down to a multiple of
    ``average_period``), the result is ``(avg_end * end - avg_start * start) / (end - start)``,
    computed in float64 and returned in the stored dtypes.
    """
    start = torch.load(filename_start, map_location=device, weights_only=False)
    end = torch.load(filename_end, map_location=device, weights_only=False)
    for name, checkpoint in ((filename_start, start), (filename_end, end)):
        missing = {"model_avg", "batch_idx_train", "average_period"} - set(checkpoint)
        if missing:
            raise ValueError(f"{name} has no {sorted(missing)}: it was saved without model_avg")

    average_period = end["average_period"]
    batch_idx_start = start["batch_idx_train"] // average_period * average_period
    batch_idx_end = end["batch_idx_train"] // average_period * average_period
    interval = batch_idx_end - batch_idx_start
    if interval <= 0:
        raise ValueError(
            f"{filename_end} (batch {batch_idx_end}) must be later than "
            f"{filename_start} (batch {batch_idx_start})"
        )
    weight_end = batch_idx_end / interval
    weight_start = -batch_idx_start / interval

    avg_end = _strip_ddp_prefix(end["model_avg"])
    avg_start = _strip_ddp_prefix(start["model_avg"])
    dtypes = {name: tensor.dtype for name, tensor in avg_end.items()}
    result = {
        name: tensor.double() if tensor.is_floating_point() else tensor
        for name, tensor in avg_end.items()
    }
    # (avg_end + avg_start * w_start / w_end) * w_end keeps the intermediate values small.
    average_state_dict(
        state_dict_1=result,
        state_dict_2=avg_start,
        weight_1=1.0,
        weight_2=weight_start / weight_end,
        scaling_factor=weight_end,
    )
    return {name: tensor.to(dtypes[name]) for name, tensor in result.items()}
