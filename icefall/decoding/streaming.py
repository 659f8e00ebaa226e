"""Streaming variants of the searches: per-stream state objects that continue across chunks.

Each stream owns one state object; a decoding step takes the encoder output of one chunk for a
batch of streams (any subset, in any order) and advances each stream's state. Results are the
same as running the non-streaming search over the concatenated encoder output.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from icefall.decoding.fast_beam_search import (
    FastBeamSearchConfig,
    FastBeamSearchStream,
    advance_streams,
)
from icefall.decoding.fsa import Fsa
from icefall.decoding.hypothesis import (
    HypothesisList,
    active_frames,
    initial_context,
    joiner_logits,
    run_decoder,
)
from icefall.decoding.modified_beam_search import initial_hypotheses, modified_beam_search_step

STREAMING_METHODS = ("greedy_search", "modified_beam_search", "fast_beam_search")


class GreedySearchState:
    """Greedy search of one stream (one symbol per frame)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.context_size = model.decoder.context_size
        self.ys = initial_context(self.context_size, model.decoder.blank_id)
        self.timestamps: List[int] = []
        self.num_frames = 0

    @property
    def tokens(self) -> List[int]:
        return self.ys[self.context_size :]


class BeamSearchState:
    """Modified beam search of one stream."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.context_size = model.decoder.context_size
        self.hyps: HypothesisList = initial_hypotheses(model, device)
        self.num_frames = 0

    @property
    def best(self):
        return self.hyps.get_most_probable(length_norm=True)

    @property
    def tokens(self) -> List[int]:
        return self.best.ys[self.context_size :]

    @property
    def timestamps(self) -> List[int]:
        return self.best.timestamp


class FastBeamSearchState:
    """Fast beam search of one stream; the partial result is the best path so far."""

    def __init__(self, model: torch.nn.Module, graph: Fsa) -> None:
        self.search = FastBeamSearchStream(
            graph, model.decoder.context_size, model.decoder.blank_id
        )

    @property
    def num_frames(self) -> int:
        return self.search.num_frames

    def _best(self):
        return self.search.lattice(allow_partial=True).best_path()

    @property
    def tokens(self) -> List[int]:
        return self._best().tokens

    @property
    def timestamps(self) -> List[int]:
        return self._best().timestamps


SearchState = Union[GreedySearchState, BeamSearchState, FastBeamSearchState]


def make_search_state(
    method: str,
    model: torch.nn.Module,
    device: torch.device,
    decoding_graph: Optional[Fsa] = None,
) -> SearchState:
    """A fresh per-stream state for ``method`` (one of :data:`STREAMING_METHODS`)."""
    if method == "greedy_search":
        return GreedySearchState(model)
    if method == "modified_beam_search":
        return BeamSearchState(model, device)
    if method == "fast_beam_search":
        if decoding_graph is None:
            raise ValueError("fast_beam_search needs a decoding graph")
        return FastBeamSearchState(model, decoding_graph)
    raise ValueError(f"unsupported streaming decoding method {method!r}; use {STREAMING_METHODS}")


def _frame_counts(encoder_out: torch.Tensor, encoder_out_lens: Optional[torch.Tensor]):
    if encoder_out_lens is None:
        return [encoder_out.size(1)] * encoder_out.size(0)
    return encoder_out_lens.tolist()


def streaming_greedy_search(
    model: torch.nn.Module,
    encoder_out: torch.Tensor,
    states: Sequence[GreedySearchState],
    encoder_out_lens: Optional[torch.Tensor] = None,
    blank_penalty: float = 0.0,
) -> None:
    """Advance greedy states by one chunk.

    Args:
      encoder_out: (N, T, encoder_dim) chunk output of N streams.
      states: N greedy states, updated in place.
      encoder_out_lens: (N,) valid frames (default: all T).
    """
    device = encoder_out.device
    blank_id = model.decoder.blank_id
    unk_id = getattr(model, "unk_id", blank_id)
    context_size = model.decoder.context_size
    lens = _frame_counts(encoder_out, encoder_out_lens)
    encoder_proj = model.joiner.encoder_proj(encoder_out)
    contexts = torch.tensor([s.ys[-context_size:] for s in states], device=device)
    decoder_proj = run_decoder(model, contexts)
    for t, active, idx in active_frames(lens, device):
        logits = joiner_logits(model, encoder_proj[idx, t], decoder_proj[idx], blank_penalty)
        emitted = []
        for i, token in zip(active, logits.argmax(dim=-1).tolist()):
            if token in (blank_id, unk_id):
                continue
            states[i].ys.append(token)
            states[i].timestamps.append(states[i].num_frames + t)
            emitted.append(i)
        if emitted:
            new_ctx = torch.tensor([states[i].ys[-context_size:] for i in emitted], device=device)
            emitted_idx = torch.tensor(emitted, device=device)
            decoder_proj = decoder_proj.index_copy(0, emitted_idx, run_decoder(model, new_ctx))
    for state, n in zip(states, lens):
        state.num_frames += n


def streaming_modified_beam_search(
    model: torch.nn.Module,
    encoder_out: torch.Tensor,
    states: Sequence[BeamSearchState],
    num_active_paths: int = 4,
    encoder_out_lens: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    blank_penalty: float = 0.0,
) -> None:
    """Advance modified-beam-search states by one chunk (see :func:`streaming_greedy_search`)."""
    lens = _frame_counts(encoder_out, encoder_out_lens)
    encoder_proj = model.joiner.encoder_proj(encoder_out)
    for t, active, idx in active_frames(lens, encoder_out.device):
        stepped = modified_beam_search_step(
            model,
            encoder_proj[idx, t],
            [states[i].hyps for i in active],
            [states[i].num_frames + t for i in active],
            num_active_paths,
            temperature,
            blank_penalty,
        )
        for i, hyps in zip(active, stepped):
            states[i].hyps = hyps
    for state, n in zip(states, lens):
        state.num_frames += n


def streaming_fast_beam_search(
    model: torch.nn.Module,
    encoder_out: torch.Tensor,
    states: Sequence[FastBeamSearchState],
    config: FastBeamSearchConfig,
    encoder_out_lens: Optional[torch.Tensor] = None,
) -> None:
    """Advance fast-beam-search states by one chunk (see :func:`streaming_greedy_search`)."""
    lens = _frame_counts(encoder_out, encoder_out_lens)
    encoder_proj = model.joiner.encoder_proj(encoder_out)
    for t, active, idx in active_frames(lens, encoder_out.device):
        advance_streams(model, [states[i].search for i in active], encoder_proj[idx, t], config)


def streaming_search(
    method: str,
    model: torch.nn.Module,
    encoder_out: torch.Tensor,
    states: Sequence[SearchState],
    encoder_out_lens: Optional[torch.Tensor] = None,
    num_active_paths: int = 4,
    fast_beam_config: Optional[FastBeamSearchConfig] = None,
) -> None:
    """Dispatch one chunk to the streaming search named ``method``."""
    if method == "greedy_search":
        streaming_greedy_search(model, encoder_out, states, encoder_out_lens)
    elif method == "modified_beam_search":
        streaming_modified_beam_search(
            model, encoder_out, states, num_active_paths, encoder_out_lens
        )
    elif method == "fast_beam_search":
        config = fast_beam_config or FastBeamSearchConfig(beam=4, max_states=32, max_contexts=4)
        streaming_fast_beam_search(model, encoder_out, states, config, encoder_out_lens)
    else:
        raise ValueError(f"unsupported streaming decoding method {method!r}")
