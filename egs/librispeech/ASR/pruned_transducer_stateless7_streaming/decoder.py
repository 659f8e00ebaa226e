"""Stateless transducer decoder (prediction network) of the streaming Zipformer recipe.

The decoder sees only the last ``context_size`` tokens: an embedding followed by a grouped 1-D
convolution over those tokens and a ReLU. Its ``state_dict`` names (``embedding.weight``,
``conv.weight``) match icefall's ``pruned_transducer_stateless7/decoder.py``.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Decoder(nn.Module):
    """Embedding + grouped Conv1d over the left context + ReLU.

    Args:
      vocab_size: number of output tokens (including blank).
      decoder_dim: embedding and output dimension; must be divisible by 4 when
        ``context_size > 1`` (the conv uses ``decoder_dim // 4`` groups).
      blank_id: id of the blank token (also used as the start-of-sequence token).
      context_size: number of tokens the decoder looks at; 1 means bigram-free (embedding only).
    """

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int, context_size: int):
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        self.embedding = nn.Embedding(num_embeddings=vocab_size, embedding_dim=decoder_dim)
        self.blank_id = blank_id
        self.vocab_size = vocab_size
        self.context_size = context_size
        if context_size > 1:
            if decoder_dim % 4 != 0:
                raise ValueError(f"decoder_dim must be divisible by 4, got {decoder_dim}")
            self.conv = nn.Conv1d(
                in_channels=decoder_dim,
                out_channels=decoder_dim,
                kernel_size=context_size,
                padding=0,
                groups=decoder_dim // 4,
                bias=False,
            )
        else:
            self.conv = nn.Identity()

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """Compute decoder outputs.

        Args:
          y: (N, U) token ids. A negative id means "no token" and gives a zero embedding
            (beam search starts hypotheses with ``[-1] * (context_size - 1) + [blank_id]``).
          need_pad: True for training: the sequence is left-padded with ``context_size - 1``
            zero frames so that output u depends on tokens ``u - context_size + 1 .. u``.
            False for decoding: ``U`` must equal ``context_size`` and the output has one frame.

        Returns:
          (N, U, decoder_dim) if ``need_pad`` else (N, 1, decoder_dim).
        """
        y = y.to(torch.int64)
        if torch.jit.is_tracing():
            embedding_out = self.embedding(y)
        else:
            valid = (y >= 0).unsqueeze(-1)
            embedding_out = self.embedding(y.clamp(min=0)) * valid
        if self.context_size > 1:
            embedding_out = embedding_out.permute(0, 2, 1)
            if need_pad:
                embedding_out = F.pad(embedding_out, pad=(self.context_size - 1, 0))
            else:
                assert embedding_out.size(-1) == self.context_size, (
                    "with need_pad=False, y must hold exactly context_size token ids per row"
                )
            embedding_out = self.conv(embedding_out)
            embedding_out = embedding_out.permute(0, 2, 1)
        return F.relu(embedding_out)
