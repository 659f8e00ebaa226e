"""The interface every transducer encoder of this recipe implements."""

from typing import Tuple

import torch
import torch.nn as nn


class EncoderInterface(nn.Module):
    """An acoustic encoder: padded features in, padded encoder frames and their lengths out."""

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
          x: (N, T, C) input features, padded.
          x_lens: (N,) int64, number of valid frames of each utterance in ``x``.
        Returns:
          (encoder_out, encoder_out_lens): (N, T', D) and (N,) int64 valid output lengths.
        """
        raise NotImplementedError("Please implement it in a subclass")
