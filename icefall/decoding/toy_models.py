"""Small transducers with icefall's decoding interface, for tests and benchmarks.

* :class:`TableTransducer` — the joiner logits are given per (frame, last token) by the
  "encoder output", so a test can write down exactly what the searches see.
* :class:`ToyTransducer` — a randomly initialised stateless decoder + tanh joiner like
  icefall's (embedding of ``context_size`` tokens, Linear projections), on any device.
"""

from __future__ import annotations

import torch
from torch import nn


class _LastTokenDecoder(nn.Module):
    """Decoder whose output is the one-hot of the last context token (-1 -> index 0)."""

    def __init__(self, vocab_size: int, context_size: int, blank_id: int = 0) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.context_size = context_size
        self.blank_id = blank_id

    def forward(self, y: torch.Tensor, need_pad: bool = False) -> torch.Tensor:
        """(N, context_size) int64 -> (N, 1, vocab_size + 1)."""
        assert not need_pad and y.size(1) == self.context_size, y.shape
        one_hot = torch.nn.functional.one_hot(y[:, -1] + 1, self.vocab_size + 1)
        return one_hot.unsqueeze(1).float()


class _TableJoiner(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.encoder_proj = nn.Identity()
        self.decoder_proj = nn.Identity()

    def forward(self, encoder_out, decoder_out, project_input: bool = True) -> torch.Tensor:
        """encoder_out (..., (V+1)*V) table rows, decoder_out (..., V+1) one-hot -> (..., V)."""
        table = encoder_out.reshape(*encoder_out.shape[:-1], self.vocab_size + 1, self.vocab_size)
        return (table * decoder_out.unsqueeze(-1)).sum(dim=-2)


class TableTransducer(nn.Module):
    """Transducer whose logits at frame t after last token y are ``table[t, y + 1]``.

    Build the "encoder output" with :meth:`encoder_out`; the decoder/joiner do the lookup.
    """

    def __init__(self, vocab_size: int, context_size: int = 2) -> None:
        super().__init__()
        self.decoder = _LastTokenDecoder(vocab_size, context_size)
        self.joiner = _TableJoiner(vocab_size)

    @staticmethod
    def encoder_out(tables: torch.Tensor) -> torch.Tensor:
        """(N, T, V+1, V) logit tables (row 0 = no token yet / -1) -> (N, T, (V+1)*V)."""
        return tables.reshape(*tables.shape[:2], -1)


class ToyDecoder(nn.Module):
    """Stateless decoder: embeddings of the last ``context_size`` tokens, concatenated, ReLU."""

    def __init__(self, vocab_size: int, decoder_dim: int, context_size: int, blank_id: int = 0):
        super().__init__()
        self.vocab_size = vocab_size
        self.context_size = context_size
        self.blank_id = blank_id
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        self.proj = nn.Linear(decoder_dim * context_size, decoder_dim)

    def forward(self, y: torch.Tensor, need_pad: bool = False) -> torch.Tensor:
        """(N, context_size) int64 (-1 = no token) -> (N, 1, decoder_dim)."""
        assert not need_pad and y.size(1) == self.context_size, y.shape
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)
        return torch.relu(self.proj(emb.flatten(1))).unsqueeze(1)


class ToyJoiner(nn.Module):
    """icefall's joiner: ``output_linear(tanh(encoder_proj(e) + decoder_proj(d)))``."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out, decoder_out, project_input: bool = True) -> torch.Tensor:
        assert encoder_out.ndim == decoder_out.ndim and encoder_out.ndim in (2, 4)
        if project_input:
            encoder_out = self.encoder_proj(encoder_out)
            decoder_out = self.decoder_proj(decoder_out)
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


class ToyTransducer(nn.Module):
    """Random decoder + joiner; feed it any (N, T, encoder_dim) tensor as encoder output.

    ``sharpness`` multiplies the output layer so the posteriors are peaky like a trained model.
    """

    def __init__(
        self,
        vocab_size: int = 10,
        encoder_dim: int = 16,
        decoder_dim: int = 16,
        joiner_dim: int = 16,
        context_size: int = 2,
        sharpness: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.decoder = ToyDecoder(vocab_size, decoder_dim, context_size)
        self.joiner = ToyJoiner(encoder_dim, decoder_dim, joiner_dim, vocab_size)
        torch.random.set_rng_state(generator_state)
        with torch.no_grad():
            self.joiner.output_linear.weight.mul_(sharpness)
            self.joiner.output_linear.bias.mul_(sharpness)
