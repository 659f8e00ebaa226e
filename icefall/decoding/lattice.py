"""Frame-layered lattices produced by ``fast_beam_search``: best path, path sampling and
sequence scoring (the parts of k2's ``one_best_decoding`` / ``Nbest`` that decoding uses).

Node ids grow with the frame: nodes of frame t are ``node_begin[t]:node_begin[t+1]``, node 0 is
the start and the last node is the super-final node. Arcs of "arc frame" t go from frame-t nodes
to frame-(t+1) nodes; the last arc frame holds the final arcs (label -1). Label 0 is blank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

NEG_INF = float("-inf")


@dataclass
class BestPath:
    """The best path of a lattice: tokens, their frames, words (aux labels) and scores."""

    tokens: List[int]
    timestamps: List[int]
    words: List[int]
    am_score: float
    lm_score: float

    @property
    def score(self) -> float:
        return self.am_score + self.lm_score


@dataclass
class Lattice:
    """Acyclic lattice in flat tensors; see the module docstring for the layout.

    Attributes:
      num_nodes: number of nodes including the super-final node.
      node_begin: frame boundaries of node ids (len = number of node frames + 1).
      src, dst, labels, aux_labels: (A,) int64 arc tensors, sorted by ``arc_frame``.
      am_scores: (A,) acoustic (joiner log-softmax) scores.
      lm_scores: (A,) graph scores (already scaled by the LM scale if any).
      arc_frame: (A,) int64 frame of each arc.
    """

    num_nodes: int
    node_begin: List[int]
    src: torch.Tensor
    dst: torch.Tensor
    labels: torch.Tensor
    aux_labels: torch.Tensor
    am_scores: torch.Tensor
    lm_scores: torch.Tensor
    arc_frame: torch.Tensor

    @property
    def scores(self) -> torch.Tensor:
        return self.am_scores + self.lm_scores

    @property
    def final_node(self) -> int:
        return self.num_nodes - 1

    @property
    def num_arc_frames(self) -> int:
        return len(self.node_begin) - 2

    def _frame_slices(self) -> List[slice]:
        bounds = torch.searchsorted(
            self.arc_frame, torch.arange(self.num_arc_frames + 1, device=self.src.device)
        ).tolist()
        return [slice(bounds[f], bounds[f + 1]) for f in range(self.num_arc_frames)]

    def is_empty(self) -> bool:
        """True if no path reaches the final node."""
        return not bool((self.dst == self.final_node).any())

    def best_path(self) -> BestPath:
        """Viterbi path (max total score). An empty lattice gives an empty path."""
        scores = self.scores
        alpha = scores.new_full((self.num_nodes,), NEG_INF)
        alpha[0] = 0.0
        best_arc = torch.full((self.num_nodes,), -1, dtype=torch.int64, device=scores.device)
        for sl in self._frame_slices():
            src, dst = self.src[sl], self.dst[sl]
            cand = alpha[src] + scores[sl]
            alpha.scatter_reduce_(0, dst, cand, reduce="amax", include_self=True)
            winner = (cand == alpha[dst]) & torch.isfinite(cand)
            arc_ids = torch.arange(sl.start, sl.stop, device=scores.device)
            best_arc.scatter_reduce_(
                0, dst[winner], arc_ids[winner], reduce="amax", include_self=True
            )
        if not torch.isfinite(alpha[self.final_node]):
            return BestPath([], [], [], NEG_INF, NEG_INF)
        arcs = []
        node = self.final_node
        while node != 0:
            arc = int(best_arc[node])
            arcs.append(arc)
            node = int(self.src[arc])
        arcs.reverse()
        idx = torch.tensor(arcs, dtype=torch.int64, device=scores.device)
        labels = self.labels[idx].tolist()
        frames = self.arc_frame[idx].tolist()
        tokens = [lab for lab in labels if lab > 0]
        timestamps = [f for lab, f in zip(labels, frames) if lab > 0]
        words = [w for w in self.aux_labels[idx].tolist() if w > 0]
        return BestPath(
            tokens,
            timestamps,
            words,
            float(self.am_scores[idx].sum()),
            float(self.lm_scores[idx].sum()),
        )

    def _backward_scores(self, scale: float) -> torch.Tensor:
        """(num_nodes,) log-sum of scaled path scores from each node to the final node."""
        scores = self.scores * scale
        beta = scores.new_full((self.num_nodes,), NEG_INF)
        beta[self.final_node] = 0.0
        for sl in reversed(self._frame_slices()):
            src = self.src[sl]
            x = scores[sl] + beta[self.dst[sl]]
            beta = _scatter_logsumexp_into(beta, src, x)
        return beta

    def sample_sequences(
        self,
        num_paths: int,
        scale: float = 0.5,
        use_aux: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> List[Tuple[int, ...]]:
        """Sample paths with probability proportional to exp(scale * score); return the distinct
        label sequences (token ids, or aux labels when ``use_aux``) in first-seen order."""
        beta = self._backward_scores(scale)
        if not torch.isfinite(beta[0]):
            return []
        device = self.src.device
        scaled = self.scores * scale
        current = torch.zeros(num_paths, dtype=torch.int64, device=device)
        chosen = []
        for sl in self._frame_slices():
            src = self.src[sl]
            logits = scaled[sl] + beta[self.dst[sl]]
            uniform = torch.rand(
                (num_paths, src.numel()), generator=generator, device=device
            ).clamp_(min=1e-20, max=1.0 - 1e-7)
            gumbel = -torch.log(-torch.log(uniform))
            allowed = src.unsqueeze(0) == current.unsqueeze(1)
            pick = torch.where(allowed, logits.unsqueeze(0) + gumbel, NEG_INF).argmax(dim=1)
            arc_ids = pick + sl.start
            chosen.append(arc_ids)
            current = self.dst[arc_ids]
        path_arcs = torch.stack(chosen, dim=1)
        labels = (self.aux_labels if use_aux else self.labels)[path_arcs].tolist()
        seen = {}
        for row in labels:
            seq = tuple(lab for lab in row if lab > 0)
            seen.setdefault(seq, None)
        return list(seen)

    def sequence_scores(
        self, sequences: Sequence[Sequence[int]], use_aux: bool = False
    ) -> torch.Tensor:
        """Log-sum of (unscaled) scores of all paths whose label sequence equals each sequence.

        A sparse forward pass over (sequence, node, position) triples: an arc keeps the position
        if its label is epsilon (blank/final for tokens, 0 for aux labels) and advances it if
        its label is the next label of the sequence.

        Args:
          sequences: K label sequences (token ids, or aux labels when ``use_aux``).
        Returns:
          (K,) total scores (``-inf`` if the lattice has no such path).
        """
        device = self.src.device
        num_seqs = len(sequences)
        if num_seqs == 0:
            return self.scores.new_zeros(0)
        scores = self.scores
        arc_labels = self.aux_labels if use_aux else self.labels
        max_len = max(len(s) for s in sequences)
        span = max_len + 1
        # Column max_len (and beyond each sequence's end) holds -2, which no arc label equals.
        padded = torch.full((num_seqs, span), -2, dtype=torch.int64, device=device)
        for k, seq in enumerate(sequences):
            if seq:
                padded[k, : len(seq)] = torch.tensor(list(seq), dtype=torch.int64, device=device)
        seq_ids = torch.arange(num_seqs, device=device)
        nodes = torch.zeros(num_seqs, dtype=torch.int64, device=device)
        positions = torch.zeros(num_seqs, dtype=torch.int64, device=device)
        totals = scores.new_zeros(num_seqs)
        for f, sl in enumerate(self._frame_slices()):
            src = self.src[sl] - self.node_begin[f]
            num_cur = self.node_begin[f + 1] - self.node_begin[f]
            num_next = self.node_begin[f + 2] - self.node_begin[f + 1]
            order = torch.argsort(src, stable=True)
            counts = torch.bincount(src, minlength=num_cur)
            first = torch.cumsum(counts, 0) - counts
            per_entry = counts[nodes]
            entry = torch.repeat_interleave(torch.arange(nodes.numel(), device=device), per_entry)
            entry_start = torch.cumsum(per_entry, 0) - per_entry
            local = first[nodes][entry] + torch.arange(entry.numel(), device=device)
            arcs = order[local - entry_start[entry]] + sl.start
            labels = arc_labels[arcs]
            is_eps = labels <= 0
            k = seq_ids[entry]
            pos = positions[entry]
            advance = (~is_eps) & (labels == padded[k, pos])
            keep = is_eps | advance
            k, arcs = k[keep], arcs[keep]
            new_pos = pos[keep] + advance[keep].long()
            new_scores = totals[entry[keep]] + scores[arcs]
            dst = self.dst[arcs] - self.node_begin[f + 1]
            keys = (k * num_next + dst) * span + new_pos
            unique_keys, inverse = torch.unique(keys, return_inverse=True)
            totals = _scatter_logsumexp_into(
                scores.new_full((unique_keys.numel(),), NEG_INF), inverse, new_scores
            )
            positions = unique_keys % span
            nodes = (unique_keys // span) % max(num_next, 1)
            seq_ids = unique_keys // (span * max(num_next, 1))
        lengths = torch.tensor([len(s) for s in sequences], device=device)
        done = positions == lengths[seq_ids]
        out = scores.new_full((num_seqs,), NEG_INF)
        return out.index_put_((seq_ids[done],), totals[done])


def _scatter_logsumexp_into(out: torch.Tensor, index: torch.Tensor, x: torch.Tensor):
    """out[i] = logaddexp(out[i], logsumexp of x[j] over j with index[j] == i)."""
    m = out.scatter_reduce(0, index, x, reduce="amax", include_self=True)
    safe_m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    total = torch.exp(out - safe_m).scatter_add(0, index, torch.exp(x - safe_m[index]))
    return torch.where(total > 0, safe_m + torch.log(total), torch.full_like(m, NEG_INF))
