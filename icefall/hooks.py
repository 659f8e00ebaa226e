"""Debugging hooks that report where inf/nan values first appear (``--inf-check 1``)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a module output (a tensor, or nested tuples/lists/dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _warn_if_not_finite(tensor: torch.Tensor, description: str) -> None:
    if not tensor.is_floating_point():
        return
    total = tensor.detach().float().sum()
    if not torch.isfinite(total):
        logging.warning(f"The sum of {description} is not finite: {total.item()}")


def register_inf_check_hooks(model: nn.Module) -> list[RemovableHandle]:
    """Log a warning whenever a module output, its gradient or a parameter gradient is not finite.

    Each submodule's outputs are checked after its forward; gradient hooks on those outputs
    check the gradients flowing back into the module; parameter hooks check parameter
    gradients. Tensor-level hooks are used (not module backward hooks), so in-place operations
    in the model keep working.

    Returns:
      Handles of the module and parameter hooks (``handle.remove()`` stops that check).
    """
    handles: list[RemovableHandle] = []
    for name, module in model.named_modules():
        module_name = name if name else "model"

        def forward_hook(
            _module: nn.Module, _inputs: Any, output: Any, module_name: str = module_name
        ) -> None:
            for i, tensor in enumerate(_tensors(output)):
                description = f"{module_name}.output[{i}]"
                _warn_if_not_finite(tensor, description)
                if tensor.requires_grad:
                    tensor.register_hook(
                        lambda grad, d=description: _warn_if_not_finite(grad, f"{d}.grad")
                    )

        handles.append(module.register_forward_hook(forward_hook))

    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            handles.append(
                parameter.register_hook(
                    lambda grad, name=name: _warn_if_not_finite(grad, f"{name}.param_grad")
                )
            )
    return handles
