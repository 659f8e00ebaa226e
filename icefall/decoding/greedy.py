"""Greedy transducer searches: one utterance with several symbols per frame, and a batched one.

Both work on any device; the model interface is icefall's (``model.decoder``, ``model.joiner``
with ``encoder_proj``/``decoder_proj`` and ``project_input=False``).
"""

from __future__ import annotations

from typing import List

import torch

from icefall.decoding.hypothesis import initial_context, joiner_logits, make_results, run_decoder

MAX_SYMBOLS_PER_UTTERANCE = 1000


def _unk_id(model: torch.nn.Module) -> int:
    """Id whose emission is treated like blank (icefall: ``model.unk_id`` if set, else blank)."""
    return getattr(model, "unk_id", model.decoder.blank_id)


def greedy_search(
    model: torch.nn.Module,
    encoder_out: torch.Tensor,
    max_sym_per_frame: int,
    return_timestamps: bool = False,
    blank_penalty: float = 0.0,
):
    """Greedy search of one utterance allowing up to ``max_sym_per_frame`` symbols per frame.

    Args:
      model: the transducer.
      encoder_out: (1, T, encoder_dim) encoder output of one utterance.
      max_sym_per_frame: most symbols emitted on one frame (>= 1).
      return_timestamps: if True return ``DecodingResults`` with the frame of each token.
      blank_penalty: subtracted from the blank logit.
    Returns:
      The token ids (List[int]), or ``DecodingResults(hyps=[ids], timestamps=[frames])``.
    """
    assert encoder_out.ndim == 3 and encoder_out.size(0) == 1, encoder_out.shape
    assert max_sym_per_frame >= 1, max_sym_per_frame
    blank_id = model.decoder.blank_id
    unk_id = _unk_id(model)
    context_size = model.decoder.context_size
    device = encoder_out.device

    hyp = initial_context(context_size, blank_id)
    timestamp: List[int] = []
    encoder_proj = model.joiner.encoder_proj(encoder_out[0])
    decoder_proj = run_decoder(model, torch.tensor([hyp], device=device, dtype=torch.int64))

    num_frames = encoder_proj.size(0)
    t = 0
    sym_on_frame = 0
    while t < num_frames and len(timestamp) < MAX_SYMBOLS_PER_UTTERANCE:
        if sym_on_frame >= max_sym_per_frame:
            t += 1
            sym_on_frame = 0
            continue
        logits = joiner_logits(model, encoder_proj[t : t + 1], decoder_proj, blank_penalty)
        token = int(logits.argmax(dim=-1).item())
        if token in (blank_id, unk_id):
            t += 1
            sym_on_frame = 0
            continue
        hyp.append(token)
        timestamp.append(t)
        sym_on_frame += 1
        context = torch.tensor([hyp[-context_size:]], device=device, dtype=torch.int64)
        decoder_proj = run_decoder(model, context)

    tokens = hyp[context_size:]
    if not return_timestamps:
        return tokens
    return make_results([tokens], [timestamp], True)


def greedy_search_batch(
    model: torch.nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    return_timestamps: bool = False,
    blank_penalty: float = 0.0,
):
    """Batched greedy search with at most one symbol per frame.

    Utterances leave the active batch when their frames run out; the decoder is re-run only
    for utterances that emitted a symbol.

    Args:
      model: the transducer.
      encoder_out: (N, T, encoder_dim) padded encoder output.
      encoder_out_lens: (N,) valid frames per utterance.
      return_timestamps: if True return ``DecodingResults``.
      blank_penalty: subtracted from the blank logit.
    Returns:
      List of N token-id lists in input order, or ``DecodingResults``.
    """
    assert encoder_out.ndim == 3, encoder_out.shape
    batch_size = encoder_out.size(0)
    blank_id = model.decoder.blank_id
    unk_id = _unk_id(model)
    context_size = model.decoder.context_size
    device = encoder_out.device
    lens = encoder_out_lens.to("cpu").tolist()

    encoder_proj = model.joiner.encoder_proj(encoder_out)
    contexts = torch.tensor(
        [initial_context(context_size, blank_id)] * batch_size, device=device, dtype=torch.int64
    )
    decoder_proj = run_decoder(model, contexts)
    hyps: List[List[int]] = [[] for _ in range(batch_size)]
    timestamps: List[List[int]] = [[] for _ in range(batch_size)]

    for t in range(max(lens, default=0)):
        active = [i for i in range(batch_size) if lens[i] > t]
        active_idx = torch.tensor(active, device=device, dtype=torch.int64)
        logits = joiner_logits(
            model, encoder_proj[active_idx, t], decoder_proj[active_idx], blank_penalty
        )
        tokens = logits.argmax(dim=-1).tolist()
        emitted = []
        for i, token in zip(active, tokens):
            if token in (blank_id, unk_id):
                continue
            hyps[i].append(token)
            timestamps[i].append(t)
            emitted.append(i)
        if emitted:
            new_contexts = [
                (initial_context(context_size, blank_id) + hyps[i])[-context_size:] for i in emitted
            ]
            emitted_idx = torch.tensor(emitted, device=device, dtype=torch.int64)
            new_ctx = torch.tensor(new_contexts, device=device, dtype=torch.int64)
            decoder_proj = decoder_proj.index_copy(0, emitted_idx, run_decoder(model, new_ctx))

    return make_results(hyps, timestamps, return_timestamps)
