"""Graves' beam search (Algorithm 1 of "Sequence Transduction with Recurrent Neural Networks").

Utterance by utterance and allows several symbols per frame; slow, kept for comparison.
"""

from __future__ import annotations

from typing import Dict

import torch

from icefall.decoding.hypothesis import (
    Hypothesis,
    HypothesisList,
    initial_context,
    joiner_logits,
    make_results,
    run_decoder,
)

MAX_EXPANSIONS_PER_FRAME = 1000


def beam_search(
    model: torch.nn.Module,
    encoder_out: torch.Tensor,
    beam: int = 4,
    temperature: float = 1.0,
    blank_penalty: float = 0.0,
    return_timestamps: bool = False,
):
    """Graves' beam search over one utterance.

    Per frame, ``A`` holds the hypotheses still able to emit and ``B`` those that ended the frame
    with a blank. The best of ``A`` is repeatedly expanded: with blank into ``B``, with its
    ``beam + 1`` best non-blank tokens back into ``A``; the frame ends once ``B`` holds ``beam``
    hypotheses better than the best of ``A``.

    Args:
      model: the transducer.
      encoder_out: (1, T, encoder_dim).
      beam: beam size (>= 1).
      temperature: joiner logits are divided by it before the log-softmax.
      blank_penalty: subtracted from the blank logit.
      return_timestamps: if True return ``DecodingResults``.
    Returns:
      Token ids (List[int]) of the best hypothesis (length-normalised score), or
      ``DecodingResults(hyps=[ids], timestamps=[frames])``.
    """
    assert encoder_out.ndim == 3 and encoder_out.size(0) == 1, encoder_out.shape
    assert beam >= 1, beam
    blank_id = model.decoder.blank_id
    unk_id = getattr(model, "unk_id", blank_id)
    context_size = model.decoder.context_size
    device = encoder_out.device

    encoder_proj = model.joiner.encoder_proj(encoder_out[0])
    zero = torch.zeros(1, device=device)
    B = HypothesisList()
    B.add(Hypothesis(ys=initial_context(context_size, blank_id), log_prob=zero))
    decoder_cache: Dict[str, torch.Tensor] = {}

    def log_probs_of(hyp: Hypothesis, t: int) -> torch.Tensor:
        key = "_".join(map(str, hyp.ys[-context_size:]))
        if key not in decoder_cache:
            context = torch.tensor([hyp.ys[-context_size:]], device=device, dtype=torch.int64)
            decoder_cache[key] = run_decoder(model, context)
        logits = joiner_logits(
            model, encoder_proj[t : t + 1], decoder_cache[key], blank_penalty, temperature
        )
        return logits.log_softmax(dim=-1)[0]

    for t in range(encoder_proj.size(0)):
        A, B = B, HypothesisList()
        joint_cache: Dict[str, torch.Tensor] = {}
        for _ in range(MAX_EXPANSIONS_PER_FRAME):
            y_star = A.get_most_probable()
            A.remove(y_star)
            if y_star.key not in joint_cache:
                joint_cache[y_star.key] = log_probs_of(y_star, t)
            log_prob = joint_cache[y_star.key]

            B.add(
                Hypothesis(
                    ys=y_star.ys[:],
                    log_prob=y_star.log_prob + log_prob[blank_id],
                    timestamp=y_star.timestamp[:],
                )
            )
            values, indices = log_prob.topk(min(beam + 1, log_prob.numel()))
            for token, value in zip(indices.tolist(), values):
                if token in (blank_id, unk_id):
                    continue
                A.add(
                    Hypothesis(
                        ys=y_star.ys + [token],
                        log_prob=y_star.log_prob + value,
                        timestamp=y_star.timestamp + [t],
                    )
                )
            if len(A) == 0:
                B = B.topk(beam)
                break
            kept_B = B.filter(A.get_most_probable().log_prob)
            if len(kept_B) >= beam:
                B = kept_B.topk(beam)
                break
        else:
            B = B.topk(beam)

    best = B.get_most_probable(length_norm=True)
    tokens = best.ys[context_size:]
    if not return_timestamps:
        return tokens
    return make_results([tokens], [best.timestamp], True)
