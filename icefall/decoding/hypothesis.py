"""Hypotheses of transducer beam searches and the small helpers every search shares.

A hypothesis keeps its token history ``ys`` including the ``context_size`` leading entries
``[-1] * (context_size - 1) + [blank_id]`` that seed the stateless decoder, exactly like icefall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch


@dataclass
class Hypothesis:
    """One partial transcript.

    Attributes:
      ys: token history, starting with the ``context_size`` decoder seed entries.
      log_prob: a 1-element float tensor, the log-probability of the hypothesis.
      timestamp: encoder frame index of every emitted (non-seed) token.
    """

    ys: List[int]
    log_prob: torch.Tensor
    timestamp: List[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Identity used for merging: the token history joined by ``_``."""
        return "_".join(map(str, self.ys))


class HypothesisList:
    """A set of hypotheses keyed by their token history; equal histories are merged."""

    def __init__(self, data: Optional[Dict[str, Hypothesis]] = None) -> None:
        self._data: Dict[str, Hypothesis] = data if data is not None else {}

    @property
    def data(self) -> Dict[str, Hypothesis]:
        return self._data

    def add(self, hyp: Hypothesis) -> None:
        """Add ``hyp``; if its ``ys`` already exists, log-add the probabilities.

        The merged hypothesis keeps the timestamps of the more probable of the two.
        """
        old = self._data.get(hyp.key)
        if old is None:
            self._data[hyp.key] = hyp
            return
        if hyp.log_prob.item() > old.log_prob.item():
            old.timestamp = hyp.timestamp
        old.log_prob = torch.logaddexp(old.log_prob, hyp.log_prob)

    def get_most_probable(self, length_norm: bool = False) -> Hypothesis:
        """The best hypothesis; with ``length_norm`` the score is ``log_prob / len(ys)``."""
        if length_norm:
            return max(self._data.values(), key=lambda h: h.log_prob.item() / len(h.ys))
        return max(self._data.values(), key=lambda h: h.log_prob.item())

    def remove(self, hyp: Hypothesis) -> None:
        del self._data[hyp.key]

    def topk(self, k: int) -> HypothesisList:
        """A new list with the ``k`` most probable hypotheses."""
        best = sorted(self._data.values(), key=lambda h: h.log_prob.item(), reverse=True)[:k]
        return HypothesisList({h.key: h for h in best})

    def filter(self, threshold: torch.Tensor) -> HypothesisList:
        """A new list with the hypotheses whose log_prob is strictly above ``threshold``."""
        kept = {k: h for k, h in self._data.items() if h.log_prob.item() > threshold.item()}
        return HypothesisList(kept)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[Hypothesis]:
        return iter(self._data.values())

    def __len__(self) -> int:
        return len(self._data)

    def __str__(self) -> str:
        return ", ".join(f"{h.key}:{h.log_prob.item():.3f}" for h in self)


def active_frames(
    lens: Sequence[int], device: torch.device
) -> Iterator[Tuple[int, List[int], torch.Tensor]]:
    """Frame-synchronous batching: for every frame t, the utterances that still have frame t.

    Args:
      lens: valid frames of each of the N utterances.
      device: where the index tensor is put.
    Yields:
      (t, indices of the K utterances with more than t frames, the same indices as a (K,)
      int64 tensor on ``device``).
    """
    for t in range(max(lens, default=0)):
        active = [i for i, n in enumerate(lens) if n > t]
        yield t, active, torch.tensor(active, device=device)


def initial_context(context_size: int, blank_id: int) -> List[int]:
    """Decoder seed ``[-1] * (context_size - 1) + [blank_id]``."""
    return [-1] * (context_size - 1) + [blank_id]


def run_decoder(model: torch.nn.Module, contexts: torch.Tensor) -> torch.Tensor:
    """Decoder output projected into the joiner space.

    Args:
      model: transducer with ``decoder`` and ``joiner.decoder_proj``.
      contexts: (N, context_size) int64 token histories (-1 = no token).
    Returns:
      (N, joiner_dim) projected decoder output.
    """
    decoder_out = model.decoder(contexts, need_pad=False)
    return model.joiner.decoder_proj(decoder_out.squeeze(1))


def joiner_logits(
    model: torch.nn.Module,
    encoder_proj: torch.Tensor,
    decoder_proj: torch.Tensor,
    blank_penalty: float = 0.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Joiner logits for already projected inputs.

    Args:
      encoder_proj: (N, joiner_dim) projected encoder frames.
      decoder_proj: (N, joiner_dim) projected decoder outputs.
      blank_penalty: subtracted from the blank logit (index 0).
      temperature: logits are divided by it.
    Returns:
      (N, vocab_size) logits.
    """
    logits = model.joiner(
        encoder_proj.unsqueeze(1).unsqueeze(1),
        decoder_proj.unsqueeze(1).unsqueeze(1),
        project_input=False,
    )
    logits = logits.squeeze(1).squeeze(1)
    if blank_penalty != 0.0:
        logits = logits.clone()
        logits[:, 0] -= blank_penalty
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def make_results(hyps: List[List[int]], timestamps: List[List[int]], return_timestamps: bool):
    """Return plain hyps, or ``icefall.utils.DecodingResults`` when timestamps are asked for."""
    if not return_timestamps:
        return hyps
    from icefall.utils import DecodingResults

    return DecodingResults(hyps=hyps, timestamps=timestamps)
