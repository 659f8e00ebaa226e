"""Prepare a trained model for export (TorchScript, ONNX).

:func:`convert_scaled_to_non_scaled` replaces the training-only modules of ``scaling.py`` with
export-friendly equivalents that compute the same forward values:

* ``ActivationBalancer`` and ``Whiten`` (identity in the forward pass) -> ``nn.Identity``;
* ``BasicNorm`` -> :class:`NonScaledNorm`, which stores ``exp(eps)`` as a Python float.

The converted model no longer has the ``count`` buffers or the ``norm_final.eps``
parameters, so convert after loading a checkpoint, not before.
"""

import copy

import torch
import torch.nn as nn
from scaling import ActivationBalancer, BasicNorm, Whiten
from torch import Tensor


class NonScaledNorm(nn.Module):
    """``x * (mean(x * x, channel_dim) + eps_exp) ** -0.5`` with a constant ``eps_exp``.

    Args:
      num_channels: size of ``x`` along ``channel_dim``.
      eps_exp: the epsilon itself (``exp`` of BasicNorm's learned log-epsilon).
      channel_dim: the channel axis.
    """

    def __init__(self, num_channels: int, eps_exp: float, channel_dim: int = -1) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.eps_exp = eps_exp

    def forward(self, x: Tensor) -> Tensor:
        """x: any shape with ``num_channels`` on ``channel_dim``; returns the same shape."""
        if not torch.jit.is_tracing():
            if x.shape[self.channel_dim] != self.num_channels:
                raise ValueError(
                    f"NonScaledNorm expects {self.num_channels} channels on dim "
                    f"{self.channel_dim}, got shape {list(x.shape)}"
                )
        scales = (torch.mean(x * x, dim=self.channel_dim, keepdim=True) + self.eps_exp).pow(-0.5)
        return x * scales


def convert_basic_norm(basic_norm: BasicNorm) -> NonScaledNorm:
    """The :class:`NonScaledNorm` computing the same function as ``basic_norm`` in eval mode."""
    return NonScaledNorm(
        num_channels=basic_norm.num_channels,
        eps_exp=basic_norm.eps.detach().exp().item(),
        channel_dim=basic_norm.channel_dim,
    )


def convert_scaled_to_non_scaled(
    model: nn.Module,
    inplace: bool = False,
    is_pnnx: bool = False,
    is_onnx: bool = False,
) -> nn.Module:
    """Replace BasicNorm, ActivationBalancer and Whiten sub-modules for export.

    Args:
      model: the model (or any sub-module tree) to convert.
      inplace: modify ``model`` itself; otherwise a deep copy is converted.
      is_pnnx, is_onnx: icefall's flags for other recipes' modules (LSTMs, Zipformer2); this
        model has none of them, so they change nothing and exist for call compatibility.
    Returns:
      The converted model (``model`` itself when ``inplace``).
    """
    del is_pnnx, is_onnx
    if not inplace:
        model = copy.deepcopy(model)
    replacements = {}
    for name, module in model.named_modules():
        if isinstance(module, BasicNorm):
            replacements[name] = convert_basic_norm(module)
        elif isinstance(module, (ActivationBalancer, Whiten)):
            replacements[name] = nn.Identity()
    for name, new_module in replacements.items():
        if name == "":
            return new_module
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, new_module)
    return model
