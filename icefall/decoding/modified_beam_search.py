"""Modified beam search: batched, at most one symbol per frame, equal histories merged.

The per-frame step is shared with the streaming decoder (``icefall.decoding.streaming``).
"""

from __future__ import annotations

from typing import List, Sequence

import torch

from icefall.decoding.hypothesis import (
    Hypothesis,
    HypothesisList,
    active_frames,
    initial_context,
    joiner_logits,
    make_results,
    run_decoder,
)


def initial_hypotheses(model: torch.nn.Module, device: torch.device) -> HypothesisList:
    """The one-hypothesis list every utterance starts from."""
    hyps = HypothesisList()
    ys = initial_context(model.decoder.context_size, model.decoder.blank_id)
    hyps.add(Hypothesis(ys=ys, log_prob=torch.zeros(1, device=device)))
    return hyps


def modified_beam_search_step(
    model: torch.nn.Module,
    encoder_proj: torch.Tensor,
    hyp_lists: Sequence[HypothesisList],
    frame_indexes: Sequence[int],
    beam: int,
    temperature: float = 1.0,
    blank_penalty: float = 0.0,
) -> List[HypothesisList]:
    """Advance several utterances by one encoder frame.

    Args:
      model: the transducer.
      encoder_proj: (N, joiner_dim) projected encoder frame of each utterance.
      hyp_lists: N hypothesis lists (one per utterance).
      frame_indexes: N frame numbers recorded as timestamps of tokens emitted now.
      beam: hypotheses kept per utterance.
      temperature: joiner logits are divided by it.
      blank_penalty: subtracted from the blank logit.
    Returns:
      N new hypothesis lists.
    """
    blank_id = model.decoder.blank_id
    unk_id = getattr(model, "unk_id", blank_id)
    context_size = model.decoder.context_size
    device = encoder_proj.device

    hyps = [list(h) for h in hyp_lists]
    counts = [len(h) for h in hyps]
    flat = [h for utt in hyps for h in utt]
    contexts = torch.tensor([h.ys[-context_size:] for h in flat], device=device)
    decoder_proj = run_decoder(model, contexts)
    utt_of_hyp = torch.repeat_interleave(
        torch.arange(len(hyps), device=device), torch.tensor(counts, device=device)
    )
    logits = joiner_logits(
        model, encoder_proj[utt_of_hyp], decoder_proj, blank_penalty, temperature
    )
    log_probs = logits.log_softmax(dim=-1)
    log_probs = log_probs + torch.cat([h.log_prob.reshape(1) for h in flat]).unsqueeze(1)
    vocab_size = log_probs.size(1)

    max_hyps = max(counts)
    padded = log_probs.new_full((len(hyps), max_hyps, vocab_size), float("-inf"))
    slot = torch.cat([torch.arange(c, device=device) for c in counts])
    padded[utt_of_hyp, slot] = log_probs
    k = min(beam, max_hyps * vocab_size)
    top_values, top_indexes = padded.reshape(len(hyps), -1).topk(k, dim=1)
    top_indexes = top_indexes.tolist()
    finite = torch.isfinite(top_values).tolist()

    new_lists: List[HypothesisList] = []
    for u, utt_hyps in enumerate(hyps):
        new_list = HypothesisList()
        for j in range(k):
            if not finite[u][j]:
                continue
            hyp_index, token = divmod(top_indexes[u][j], vocab_size)
            old = utt_hyps[hyp_index]
            log_prob = top_values[u, j : j + 1]
            if token in (blank_id, unk_id):
                new_hyp = Hypothesis(ys=old.ys[:], log_prob=log_prob, timestamp=old.timestamp[:])
            else:
                new_hyp = Hypothesis(
                    ys=old.ys + [token],
                    log_prob=log_prob,
                    timestamp=old.timestamp + [frame_indexes[u]],
                )
            new_list.add(new_hyp)
        new_lists.append(new_list)
    return new_lists


def modified_beam_search(
    model: torch.nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int = 4,
    temperature: float = 1.0,
    blank_penalty: float = 0.0,
    return_timestamps: bool = False,
):
    """Batched beam search limited to one symbol per frame (icefall's recommended search).

    Args:
      model: the transducer.
      encoder_out: (N, T, encoder_dim) padded encoder output.
      encoder_out_lens: (N,) valid frames per utterance.
      beam: hypotheses kept per utterance.
      temperature: joiner logits are divided by it.
      blank_penalty: subtracted from the blank logit.
      return_timestamps: if True return ``DecodingResults``.
    Returns:
      N token-id lists (best hypothesis by length-normalised score), or ``DecodingResults``.
    """
    assert encoder_out.ndim == 3, encoder_out.shape
    assert beam >= 1, beam
    device = encoder_out.device
    lens = encoder_out_lens.to("cpu").tolist()
    encoder_proj = model.joiner.encoder_proj(encoder_out)
    hyp_lists = [initial_hypotheses(model, device) for _ in lens]

    for t, active, active_idx in active_frames(lens, device):
        stepped = modified_beam_search_step(
            model,
            encoder_proj[active_idx, t],
            [hyp_lists[i] for i in active],
            [t] * len(active),
            beam,
            temperature,
            blank_penalty,
        )
        for i, new_list in zip(active, stepped):
            hyp_lists[i] = new_list

    return best_of(hyp_lists, model.decoder.context_size, return_timestamps)


def best_of(hyp_lists: Sequence[HypothesisList], context_size: int, return_timestamps: bool):
    """Best hypothesis (length-normalised) of every list, seed tokens stripped."""
    best = [h.get_most_probable(length_norm=True) for h in hyp_lists]
    hyps = [b.ys[context_size:] for b in best]
    return make_results(hyps, [b.timestamp for b in best], return_timestamps)
