"""FSA-based fast beam search for transducers (k2's RnntDecodingStreams, in plain PyTorch).

The search is frame-synchronous over pairs (graph state, decoder context). On every frame the
decoder and joiner run once per distinct context; each surviving pair expands with blank
(graph state and context unchanged) and with every graph arc leaving its state (token = arc
label, context shifted). Pairs reached more than once are merged (max score); then pruning keeps
pairs within ``beam`` of the best, at most ``max_contexts`` contexts and ``max_states`` pairs per
utterance. Every surviving expansion is recorded as a lattice arc, so the output is a lattice
whose nodes are (frame, pair); one-best and n-best results are read from it
(:mod:`icefall.decoding.lattice`).

Everything is batched over utterances with tensor ops, on the device of the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from icefall.decoding.fsa import Fsa
from icefall.decoding.hypothesis import active_frames, initial_context, joiner_logits, run_decoder
from icefall.decoding.lattice import Lattice


@dataclass
class FastBeamSearchConfig:
    """Pruning settings of :func:`fast_beam_search` (k2.RnntDecodingConfig)."""

    beam: float = 20.0
    max_states: int = 64
    max_contexts: int = 8
    temperature: float = 1.0
    blank_penalty: float = 0.0


class FastBeamSearchStream:
    """Search state of one utterance; continues across calls (used by streaming decoding).

    Attributes (S = surviving pairs after the last frame):
      graph_states: (S,) int64 graph states.
      contexts: (S, context_size) int64 decoder histories.
      scores: (S,) float best path score reaching each pair.
      node_ids: (S,) int64 lattice node of each pair.
      num_frames: frames consumed so far.
    """

    def __init__(self, graph: Fsa, context_size: int, blank_id: int) -> None:
        device = graph.device
        self.graph = graph
        self.graph_states = torch.tensor([graph.start], dtype=torch.int64, device=device)
        self.contexts = torch.tensor(
            [initial_context(context_size, blank_id)], dtype=torch.int64, device=device
        )
        self.scores = torch.zeros(1, device=device)
        self.node_ids = torch.zeros(1, dtype=torch.int64, device=device)
        self.num_nodes = 1
        self.num_frames = 0
        self.node_begin: List[int] = [0, 1]
        self.arc_chunks: List[List[torch.Tensor]] = []

    def add_frame(
        self,
        graph_states: torch.Tensor,
        contexts: torch.Tensor,
        scores: torch.Tensor,
        arcs: List[torch.Tensor],
    ) -> None:
        """Install the pairs of the next frame; ``arcs`` = [src_local, dst_local, label, aux,
        am_score, lm_score] with local indexes into the old / new pair arrays."""
        src_local, dst_local, label, aux, am, lm = arcs
        new_nodes = torch.arange(
            self.num_nodes, self.num_nodes + graph_states.numel(), device=graph_states.device
        )
        self.arc_chunks.append([self.node_ids[src_local], new_nodes[dst_local], label, aux, am, lm])
        self.graph_states = graph_states
        self.contexts = contexts
        self.scores = scores
        self.node_ids = new_nodes
        self.num_nodes += graph_states.numel()
        self.node_begin.append(self.num_nodes)
        self.num_frames += 1

    def lattice(self, allow_partial: bool = False) -> Lattice:
        """The lattice so far: arcs to a super-final node from final graph states.

        Without a final graph state among the last frame's pairs, the lattice is empty unless
        ``allow_partial`` (then every pair counts as final with score 0).
        """
        device = self.graph.device
        final_scores = self.graph.search_tables().final_scores[self.graph_states]
        if allow_partial and not bool(torch.isfinite(final_scores).any()):
            final_scores = torch.zeros_like(final_scores)
        keep = torch.isfinite(final_scores)
        final_node = self.num_nodes
        n = int(keep.sum())
        final_arcs = [
            self.node_ids[keep],
            torch.full((n,), final_node, dtype=torch.int64, device=device),
            torch.full((n,), -1, dtype=torch.int64, device=device),
            torch.zeros(n, dtype=torch.int64, device=device),
            torch.zeros(n, device=device),
            final_scores[keep],
        ]
        chunks = self.arc_chunks + [final_arcs]
        columns = [torch.cat([c[i] for c in chunks]) for i in range(6)]
        arc_frame = torch.cat([torch.full_like(c[0], t) for t, c in enumerate(chunks)])
        return Lattice(
            num_nodes=self.num_nodes + 1,
            node_begin=self.node_begin + [self.num_nodes + 1],
            src=columns[0],
            dst=columns[1],
            labels=columns[2],
            aux_labels=columns[3],
            am_scores=columns[4],
            lm_scores=columns[5],
            arc_frame=arc_frame,
        )


def _rank_within_groups(groups: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Rank (0 = best) of every element among the elements of its group, by descending score."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    first = torch.searchsorted(sorted_groups, sorted_groups)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=groups.device) - first
    return ranks


def _expand_ranges(begin: torch.Tensor, rows: torch.Tensor):
    """For CSR offsets ``begin`` and selected ``rows``, list every element of those rows.

    Returns:
      (which, index): ``which[i]`` is the position in ``rows`` of element i and ``index[i]``
      its index in the CSR data.
    """
    counts = begin[rows + 1] - begin[rows]
    which = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts)
    start = torch.cumsum(counts, 0) - counts
    index = begin[rows][which] + torch.arange(which.numel(), device=rows.device) - start[which]
    return which, index


def _context_codes(contexts: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Encode (K, context_size) histories (ids >= -1) as unique int64 numbers."""
    base = vocab_size + 1
    codes = torch.zeros(contexts.size(0), dtype=torch.int64, device=contexts.device)
    for j in range(contexts.size(1)):
        codes = codes * base + (contexts[:, j] + 1)
    return codes


def _segment_max(values: torch.Tensor, segments: torch.Tensor, num: int) -> torch.Tensor:
    out = values.new_full((num,), float("-inf"))
    return out.scatter_reduce(0, segments, values, reduce="amax", include_self=True)


def advance_streams(
    model: torch.nn.Module,
    streams: Sequence[FastBeamSearchStream],
    encoder_proj: torch.Tensor,
    config: FastBeamSearchConfig,
) -> None:
    """Consume one encoder frame in each of ``streams`` (all sharing one graph).

    Args:
      model: the transducer.
      streams: N search states, updated in place.
      encoder_proj: (N, joiner_dim) projected encoder frame of each stream.
      config: pruning settings.
    """
    device = encoder_proj.device
    graph = streams[0].graph
    blank_id = model.decoder.blank_id
    num_streams = len(streams)

    counts = torch.tensor([s.graph_states.numel() for s in streams], device=device)
    stream_of_pair = torch.repeat_interleave(torch.arange(num_streams, device=device), counts)
    graph_states = torch.cat([s.graph_states for s in streams])
    contexts = torch.cat([s.contexts for s in streams])
    scores = torch.cat([s.scores for s in streams])
    pair_offset = torch.cumsum(counts, 0) - counts

    # One decoder + joiner call per distinct (stream, context).
    vocab_size = model.decoder.vocab_size
    ctx_keys = stream_of_pair * (vocab_size + 1) ** contexts.size(1) + _context_codes(
        contexts, vocab_size
    )
    unique_ctx_keys, ctx_of_pair = torch.unique(ctx_keys, return_inverse=True)
    first_pair = torch.full((unique_ctx_keys.numel(),), contexts.size(0), device=device)
    first_pair = first_pair.scatter_reduce(
        0, ctx_of_pair, torch.arange(contexts.size(0), device=device), reduce="amin"
    )
    decoder_proj = run_decoder(model, contexts[first_pair])
    logits = joiner_logits(
        model,
        encoder_proj[stream_of_pair[first_pair]],
        decoder_proj,
        config.blank_penalty,
        config.temperature,
    )
    log_probs = logits.log_softmax(dim=-1)

    # Candidates: blank keeps the pair; every emitting arc of every state in the pair's
    # epsilon closure emits its label (adding the epsilon-path score).
    tables = graph.search_tables()
    num_pairs = graph_states.numel()
    pair_of_entry, entry = _expand_ranges(tables.closure_begin, graph_states)
    reached = tables.closure_state[entry]
    pair_of_arc, emit_index = _expand_ranges(tables.emit_begin, reached)
    arc_index = tables.emit_arcs[emit_index]
    entry_of_arc = pair_of_arc
    pair_of_arc = pair_of_entry[entry_of_arc]
    arc_labels = graph.labels[arc_index]
    all_pairs = torch.arange(num_pairs, device=device)

    src_pair = torch.cat([all_pairs, pair_of_arc])
    labels = torch.cat([torch.full_like(all_pairs, blank_id), arc_labels])
    aux = torch.cat([torch.zeros_like(all_pairs), graph.aux_labels[arc_index]])
    dst_graph = torch.cat([graph_states, graph.dst[arc_index]])
    am = log_probs[ctx_of_pair[src_pair], labels]
    arc_lm = graph.scores[arc_index] + tables.closure_score[entry[entry_of_arc]]
    lm = torch.cat([torch.zeros(num_pairs, device=device), arc_lm])
    new_contexts = torch.cat(
        [contexts, torch.cat([contexts[pair_of_arc, 1:], arc_labels.unsqueeze(1)], dim=1)]
    )
    total = scores[src_pair] + am + lm
    cand_stream = stream_of_pair[src_pair]

    # Beam pruning relative to each stream's best candidate.
    best = _segment_max(total, cand_stream, num_streams)
    keep = total >= best[cand_stream] - config.beam
    src_pair, labels, aux, dst_graph = src_pair[keep], labels[keep], aux[keep], dst_graph[keep]
    am, lm, total, cand_stream = am[keep], lm[keep], total[keep], cand_stream[keep]
    new_contexts = new_contexts[keep]

    # Merge candidates that reach the same (stream, graph state, context).
    code = _context_codes(new_contexts, vocab_size)
    ctx_span = (vocab_size + 1) ** new_contexts.size(1)
    if num_streams * graph.num_states * ctx_span >= 2**62:
        raise ValueError(
            "(stream, graph state, context) keys overflow int64: decode fewer utterances at once "
            "or use a smaller graph / context size"
        )
    pair_key = (cand_stream * graph.num_states + dst_graph) * ctx_span + code
    unique_pairs, pair_of_cand = torch.unique(pair_key, return_inverse=True)
    pair_score = _segment_max(total, pair_of_cand, unique_pairs.numel())
    rep = torch.full((unique_pairs.numel(),), total.numel(), device=device)
    rep = rep.scatter_reduce(
        0, pair_of_cand, torch.arange(total.numel(), device=device), reduce="amin"
    )
    pair_stream = cand_stream[rep]

    # At most max_contexts contexts per stream, ranked by their best pair.
    ctx_key = pair_stream * ctx_span + code[rep]
    unique_ctx, ctx_index = torch.unique(ctx_key, return_inverse=True)
    ctx_best = _segment_max(pair_score, ctx_index, unique_ctx.numel())
    ctx_rank = _rank_within_groups(unique_ctx // ctx_span, ctx_best)
    survive = ctx_rank[ctx_index] < config.max_contexts
    # At most max_states pairs per stream.
    masked = torch.where(survive, pair_score, torch.full_like(pair_score, float("-inf")))
    survive &= _rank_within_groups(pair_stream, masked) < config.max_states

    new_index = torch.full_like(survive, -1, dtype=torch.int64)
    kept_pairs = survive.nonzero().squeeze(1)
    kept_stream = pair_stream[kept_pairs]
    kept_counts = torch.bincount(kept_stream, minlength=num_streams)
    kept_offset = torch.cumsum(kept_counts, 0) - kept_counts
    local = torch.arange(kept_pairs.numel(), device=device) - kept_offset[kept_stream]
    new_index[kept_pairs] = local
    arc_dst = new_index[pair_of_cand]
    arc_keep = arc_dst >= 0
    arc_stream = cand_stream[arc_keep]
    arc_cols = [
        src_pair[arc_keep] - pair_offset[arc_stream],
        arc_dst[arc_keep],
        labels[arc_keep],
        aux[arc_keep],
        am[arc_keep],
        lm[arc_keep],
    ]
    arc_order = torch.argsort(arc_stream, stable=True)
    arc_cols = [c[arc_order] for c in arc_cols]
    arc_counts_per_stream = torch.bincount(arc_stream, minlength=num_streams).tolist()

    kept_graph = dst_graph[rep[kept_pairs]]
    kept_ctx = new_contexts[rep[kept_pairs]]
    kept_scores = pair_score[kept_pairs]
    pair_splits = kept_counts.tolist()
    per_stream_arcs = [torch.split(c, arc_counts_per_stream) for c in arc_cols]
    for i, (g, c, s) in enumerate(
        zip(
            torch.split(kept_graph, pair_splits),
            torch.split(kept_ctx, pair_splits),
            torch.split(kept_scores, pair_splits),
        )
    ):
        streams[i].add_frame(g, c, s, [col[i] for col in per_stream_arcs])


def fast_beam_search(
    model: torch.nn.Module,
    decoding_graph: Fsa,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float,
    max_states: int,
    max_contexts: int,
    temperature: float = 1.0,
    allow_partial: bool = False,
    blank_penalty: float = 0.0,
) -> List[Lattice]:
    """Run fast beam search over a batch and return one lattice per utterance.

    Args:
      model: the transducer.
      decoding_graph: trivial graph or LG (its scores already multiplied by the LM scale),
        on the same device as ``encoder_out``.
      encoder_out: (N, T, encoder_dim).
      encoder_out_lens: (N,) valid frames.
      beam, max_states, max_contexts: pruning settings.
      temperature: joiner logits are divided by it.
      allow_partial: if no final graph state survives, treat the last frame's states as final.
      blank_penalty: subtracted from the blank logit.
    Returns:
      N lattices (labels = token ids, 0 = blank, -1 = final arc; aux labels = graph aux labels).
    """
    assert encoder_out.ndim == 3, encoder_out.shape
    config = FastBeamSearchConfig(beam, max_states, max_contexts, temperature, blank_penalty)
    streams = make_streams(model, decoding_graph, encoder_out.size(0))
    encoder_proj = model.joiner.encoder_proj(encoder_out)
    lens = encoder_out_lens.tolist()
    for t, active, idx in active_frames(lens, encoder_out.device):
        advance_streams(model, [streams[i] for i in active], encoder_proj[idx, t], config)
    return [s.lattice(allow_partial) for s in streams]


def make_streams(
    model: torch.nn.Module, decoding_graph: Fsa, num: int
) -> List[FastBeamSearchStream]:
    """``num`` fresh search states over ``decoding_graph``."""
    if decoding_graph.num_arcs and int(decoding_graph.labels.max()) >= model.decoder.vocab_size:
        raise ValueError("decoding graph has labels outside the model's vocabulary")
    return [
        FastBeamSearchStream(decoding_graph, model.decoder.context_size, model.decoder.blank_id)
        for _ in range(num)
    ]


def fast_beam_search_one_best(
    model: torch.nn.Module,
    decoding_graph: Fsa,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float,
    max_states: int,
    max_contexts: int,
    temperature: float = 1.0,
    allow_partial: bool = False,
    blank_penalty: float = 0.0,
    return_timestamps: bool = False,
):
    """Fast beam search, then the best path of each lattice.

    Returns:
      N token-id lists, or ``DecodingResults`` with the frame of every token.
    """
    lattices = fast_beam_search(
        model,
        decoding_graph,
        encoder_out,
        encoder_out_lens,
        beam,
        max_states,
        max_contexts,
        temperature,
        allow_partial,
        blank_penalty,
    )
    return one_best_results(lattices, return_timestamps)


def one_best_results(lattices: Sequence[Lattice], return_timestamps: bool = False):
    """Token ids (and timestamps) of the best path of every lattice."""
    from icefall.decoding.hypothesis import make_results

    paths = [lat.best_path() for lat in lattices]
    hyps = [p.tokens for p in paths]
    return make_results(hyps, [p.timestamps for p in paths], return_timestamps)


def fast_beam_search_nbest(
    model: torch.nn.Module,
    decoding_graph: Fsa,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float,
    max_states: int,
    max_contexts: int,
    num_paths: int,
    nbest_scale: float = 0.5,
    temperature: float = 1.0,
    blank_penalty: float = 0.0,
    seed: Optional[int] = 0,
) -> List[List[int]]:
    """Sample ``num_paths`` paths per lattice (scores scaled by ``nbest_scale``), keep the
    distinct token sequences and return the one with the highest total lattice score (log-sum
    over all its alignments).

    Returns:
      N token-id lists.
    """
    sampled = _sample_lattice_paths(
        model,
        decoding_graph,
        encoder_out,
        encoder_out_lens,
        beam,
        max_states,
        max_contexts,
        num_paths,
        nbest_scale,
        temperature,
        blank_penalty,
        seed,
        use_aux=False,
    )
    return _highest_scoring(sampled, use_aux=False)


def fast_beam_search_nbest_LG(
    model: torch.nn.Module,
    decoding_graph: Fsa,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float,
    max_states: int,
    max_contexts: int,
    num_paths: int,
    nbest_scale: float = 0.5,
    temperature: float = 1.0,
    blank_penalty: float = 0.0,
    seed: Optional[int] = 0,
) -> List[List[int]]:
    """Like :func:`fast_beam_search_nbest` over an LG graph, ranking word sequences.

    Returns:
      N word-id lists (the graph's aux labels).
    """
    sampled = _sample_lattice_paths(
        model,
        decoding_graph,
        encoder_out,
        encoder_out_lens,
        beam,
        max_states,
        max_contexts,
        num_paths,
        nbest_scale,
        temperature,
        blank_penalty,
        seed,
        use_aux=True,
    )
    return _highest_scoring(sampled, use_aux=True)


def fast_beam_search_nbest_oracle(
    model: torch.nn.Module,
    decoding_graph: Fsa,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float,
    max_states: int,
    max_contexts: int,
    num_paths: int,
    ref_texts: Sequence[Sequence[int]],
    nbest_scale: float = 0.5,
    temperature: float = 1.0,
    blank_penalty: float = 0.0,
    seed: Optional[int] = 0,
) -> List[List[int]]:
    """The sampled token sequence closest (edit distance) to each reference; analysis only.

    Args:
      ref_texts: N reference token-id sequences.
    Returns:
      N token-id lists.
    """
    from kaldialign import edit_distance

    sampled = _sample_lattice_paths(
        model,
        decoding_graph,
        encoder_out,
        encoder_out_lens,
        beam,
        max_states,
        max_contexts,
        num_paths,
        nbest_scale,
        temperature,
        blank_penalty,
        seed,
        use_aux=False,
    )
    out = []
    for (_, seqs), ref in zip(sampled, ref_texts):
        if not seqs:
            out.append([])
            continue
        errors = [edit_distance(list(ref), list(s))["total"] for s in seqs]
        out.append(list(seqs[min(range(len(seqs)), key=errors.__getitem__)]))
    return out


def _sample_lattice_paths(
    model: torch.nn.Module,
    decoding_graph: Fsa,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: float,
    max_states: int,
    max_contexts: int,
    num_paths: int,
    nbest_scale: float,
    temperature: float,
    blank_penalty: float,
    seed: Optional[int],
    use_aux: bool,
) -> List[Tuple[Lattice, List[Tuple[int, ...]]]]:
    """Fast beam search, then ``num_paths`` sampled paths per lattice (scores scaled by
    ``nbest_scale``), reduced to their distinct label sequences.

    Args:
      encoder_out: (N, T, C) encoder output.
      encoder_out_lens: (N,) valid frames per utterance.
      use_aux: sample the graph's aux labels (words) instead of its token labels.
    Returns:
      N pairs (lattice, its distinct sampled sequences).
    """
    lattices = fast_beam_search(
        model,
        decoding_graph,
        encoder_out,
        encoder_out_lens,
        beam,
        max_states,
        max_contexts,
        temperature,
        blank_penalty=blank_penalty,
    )
    sampled = []
    for lat in lattices:
        generator = _generator(seed, encoder_out.device)
        seqs = lat.sample_sequences(num_paths, nbest_scale, use_aux=use_aux, generator=generator)
        sampled.append((lat, seqs))
    return sampled


def _highest_scoring(
    sampled: Sequence[Tuple[Lattice, List[Tuple[int, ...]]]], use_aux: bool
) -> List[List[int]]:
    """Per lattice, the sampled sequence with the highest total lattice score ([] if none)."""
    out = []
    for lat, seqs in sampled:
        scores = lat.sequence_scores(seqs, use_aux=use_aux)
        out.append(list(seqs[int(scores.argmax())]) if seqs else [])
    return out


def _generator(seed: Optional[int], device: torch.device) -> Optional[torch.Generator]:
    """A generator seeded per utterance, so batched and one-by-one decoding sample alike."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)
