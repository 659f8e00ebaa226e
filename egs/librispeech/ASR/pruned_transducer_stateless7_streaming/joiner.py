"""Transducer joiner of the streaming Zipformer recipe.

``logits = output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))``; no log-softmax.
State_dict names (``encoder_proj``, ``decoder_proj``, ``output_linear``) match icefall's
``pruned_transducer_stateless7/joiner.py``.
"""

import torch
import torch.nn as nn


class Joiner(nn.Module):
    """Additive joiner with a tanh non-linearity.

    Args:
      encoder_dim: dimension of the encoder output.
      decoder_dim: dimension of the decoder output.
      joiner_dim: dimension of the joint space both inputs are projected to.
      vocab_size: number of output tokens.
    """

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(
        self,
        encoder_out: torch.Tensor,
        decoder_out: torch.Tensor,
        project_input: bool = True,
    ) -> torch.Tensor:
        """Combine encoder and decoder outputs into logits.

        Args:
          encoder_out: (N, C_enc) or (N, T, s_range, C_enc); already projected to joiner_dim
            (last dim J) when ``project_input`` is False.
          decoder_out: (N, C_dec) or (N, T, s_range, C_dec) (or J when not projecting). Both
            inputs must have the same number of dims; 4-D inputs broadcast against each other.
          project_input: apply ``encoder_proj``/``decoder_proj`` first. Decoding code projects
            once per frame/context and passes False.

        Returns:
          Logits of shape (N, vocab_size) or (N, T, s_range, vocab_size).
        """
        assert encoder_out.ndim == decoder_out.ndim, (encoder_out.shape, decoder_out.shape)
        assert encoder_out.ndim in (2, 4), encoder_out.shape
        if project_input:
            logit = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            logit = encoder_out + decoder_out
        return self.output_linear(torch.tanh(logit))
