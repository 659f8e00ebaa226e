"""Transducer searches on hand-made joiner outputs and on a small random transducer."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from icefall.decoding import (
    beam_search,
    greedy_search,
    greedy_search_batch,
    modified_beam_search,
)
from icefall.decoding.hypothesis import Hypothesis, HypothesisList
from icefall.decoding.toy_models import TableTransducer, ToyTransducer
from icefall.utils import DecodingResults

VOCAB = 3  # blank, 1, 2


def log(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def hand_made_case() -> torch.Tensor:
    """Two frames where greedy picks [1, 1] but the most probable sequence is [2].

    Rows: index y + 1 holds the logits after last token y (y = 0 is the initial blank).
    """
    table = torch.zeros(1, 2, VOCAB + 1, VOCAB)
    blanky = log([0.98, 0.01, 0.01])
    table[0, 0, 1] = log([0.25, 0.40, 0.35])
    table[0, 0, 2] = blanky
    table[0, 0, 3] = blanky
    table[0, 1, 1] = log([0.50, 0.25, 0.25])
    table[0, 1, 2] = log([0.10, 0.46, 0.44])
    table[0, 1, 3] = log([0.90, 0.05, 0.05])
    return TableTransducer.encoder_out(table)


def test_greedy_hand_made():
    model = TableTransducer(VOCAB)
    enc = hand_made_case()
    assert greedy_search(model, enc, max_sym_per_frame=1) == [1, 1]
    assert greedy_search_batch(model, enc, torch.tensor([2])) == [[1, 1]]
    res = greedy_search(model, enc, max_sym_per_frame=1, return_timestamps=True)
    assert isinstance(res, DecodingResults)
    assert res.hyps == [[1, 1]] and res.timestamps == [[0, 1]]


def test_greedy_several_symbols_per_frame():
    """Frame 0 emits 1 then 2 when allowed two symbols; frame 1 emits nothing."""
    model = TableTransducer(VOCAB)
    table = torch.zeros(1, 2, VOCAB + 1, VOCAB)
    table[0, 0, 1] = log([0.1, 0.8, 0.1])
    table[0, 0, 2] = log([0.2, 0.1, 0.7])
    table[0, 0, 3] = log([0.9, 0.05, 0.05])
    table[0, 1, :] = log([0.9, 0.05, 0.05])
    enc = TableTransducer.encoder_out(table)
    assert greedy_search(model, enc, max_sym_per_frame=1) == [1]
    res = greedy_search(model, enc, max_sym_per_frame=2, return_timestamps=True)
    assert res.hyps == [[1, 2]] and res.timestamps == [[0, 0]]
    assert greedy_search(model, enc, max_sym_per_frame=3) == [1, 2]


def test_beam_searches_find_the_better_sequence():
    model = TableTransducer(VOCAB)
    enc = hand_made_case()
    assert beam_search(model, enc, beam=4) == [2]
    res = modified_beam_search(model, enc, torch.tensor([2]), beam=4, return_timestamps=True)
    assert res.hyps == [[2]] and res.timestamps == [[0]]
    assert modified_beam_search(model, enc, torch.tensor([2]), beam=1) == [[1, 1]]


def brute_force_best(log_probs_fn, num_frames: int, vocab: int, context_size: int):
    """Exhaustive modified-topology search: the sequence with the highest log-sum over its
    alignments (one symbol or blank per frame), length-normalised like icefall."""
    totals: dict = {}
    for alignment in itertools.product(range(vocab), repeat=num_frames):
        ys = [-1] * (context_size - 1) + [0]
        score = 0.0
        for t, tok in enumerate(alignment):
            score += float(log_probs_fn(t, ys[-context_size:])[tok])
            if tok != 0:
                ys.append(tok)
        key = tuple(ys)
        old = totals.get(key, -math.inf)
        totals[key] = max(old, score) + math.log1p(math.exp(-abs(old - score)))
    best = max(totals, key=lambda k: totals[k] / len(k))
    return list(best[context_size:])


def test_modified_beam_search_wide_beam_is_exhaustive():
    torch.manual_seed(3)
    model = ToyTransducer(vocab_size=4, sharpness=3.0, seed=3)
    enc = torch.randn(1, 5, 16)

    def log_probs_fn(t, ctx):
        with torch.no_grad():
            dec = model.joiner.decoder_proj(model.decoder(torch.tensor([ctx]))[:, 0])
            logits = model.joiner(model.joiner.encoder_proj(enc[:, t]), dec, project_input=False)
        return logits.log_softmax(-1)[0]

    expected = brute_force_best(log_probs_fn, 5, 4, 2)
    with torch.no_grad():
        got = modified_beam_search(model, enc, torch.tensor([5]), beam=4**5)
    assert got == [expected]


@pytest.fixture(scope="module")
def toy_batch():
    torch.manual_seed(0)
    model = ToyTransducer(vocab_size=12, sharpness=4.0, seed=1)
    enc = torch.randn(4, 30, 16) * 2
    lens = torch.tensor([30, 17, 25, 6])
    return model, enc, lens


def test_modified_beam_one_equals_greedy(toy_batch):
    model, enc, lens = toy_batch
    with torch.no_grad():
        greedy = greedy_search_batch(model, enc, lens, return_timestamps=True)
        beam1 = modified_beam_search(model, enc, lens, beam=1, return_timestamps=True)
    assert beam1.hyps == greedy.hyps
    assert beam1.timestamps == greedy.timestamps
    assert any(len(h) > 3 for h in greedy.hyps)


def test_batched_equals_one_by_one(toy_batch):
    model, enc, lens = toy_batch
    with torch.no_grad():
        greedy = greedy_search_batch(model, enc, lens)
        beam = modified_beam_search(model, enc, lens, beam=4)
        for i, n in enumerate(lens.tolist()):
            one = enc[i : i + 1, :n]
            assert greedy_search(model, one, max_sym_per_frame=1) == greedy[i]
            assert greedy_search_batch(model, one, torch.tensor([n])) == [greedy[i]]
            assert modified_beam_search(model, one, torch.tensor([n]), beam=4) == [beam[i]]


def test_beam_search_returns_valid_tokens(toy_batch):
    model, enc, lens = toy_batch
    with torch.no_grad():
        res = beam_search(model, enc[:1, :10], beam=3, return_timestamps=True)
    assert len(res.hyps[0]) == len(res.timestamps[0])
    assert all(0 < tok < 12 for tok in res.hyps[0])
    assert res.timestamps[0] == sorted(res.timestamps[0])
    assert all(0 <= t < 10 for t in res.timestamps[0])


def test_hypothesis_list_merges_with_logaddexp():
    hyps = HypothesisList()
    hyps.add(Hypothesis(ys=[-1, 0, 5], log_prob=torch.tensor([math.log(0.2)]), timestamp=[3]))
    hyps.add(Hypothesis(ys=[-1, 0, 5], log_prob=torch.tensor([math.log(0.3)]), timestamp=[4]))
    hyps.add(Hypothesis(ys=[-1, 0, 6], log_prob=torch.tensor([math.log(0.4)]), timestamp=[2]))
    assert len(hyps) == 2
    best = hyps.get_most_probable()
    assert best.ys == [-1, 0, 5]
    assert best.log_prob.item() == pytest.approx(math.log(0.5), abs=1e-6)
    assert best.timestamp == [4]
    assert [h.ys for h in hyps.topk(1)] == [[-1, 0, 5]]


def test_empty_and_zero_length_inputs(toy_batch):
    model, enc, _ = toy_batch
    lens = torch.tensor([0, 3])
    with torch.no_grad():
        assert greedy_search_batch(model, enc[:2, :3], lens)[0] == []
        assert modified_beam_search(model, enc[:2, :3], lens, beam=2)[0] == []


@pytest.mark.parametrize("method", ["greedy_search", "modified_beam_search", "fast_beam_search"])
def test_streaming_states_continue_across_chunks(toy_batch, method):
    """Feeding the encoder output chunk by chunk (any chunking, any subset of streams per call)
    gives the non-streaming result, timestamps included."""
    from icefall.decoding import fast_beam_search_one_best, trivial_graph
    from icefall.decoding.fast_beam_search import FastBeamSearchConfig
    from icefall.decoding.streaming import make_search_state, streaming_search

    model, enc, lens = toy_batch
    graph = trivial_graph(11)
    with torch.no_grad():
        if method == "greedy_search":
            expected = greedy_search_batch(model, enc, lens, return_timestamps=True)
        elif method == "modified_beam_search":
            expected = modified_beam_search(model, enc, lens, beam=3, return_timestamps=True)
        else:
            expected = fast_beam_search_one_best(
                model, graph, enc, lens, 6.0, 16, 4, return_timestamps=True
            )
        states = [make_search_state(method, model, enc.device, graph) for _ in lens]
        config = FastBeamSearchConfig(beam=6.0, max_states=16, max_contexts=4)
        bounds = [0, 4, 5, 13, 22, 30]
        for step, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            # Streams take turns: on odd steps utterance 0 waits and catches up later.
            members = [i for i in range(len(lens)) if not (step % 2 and i == 0)]
            chunk_lens = (lens[members] - a).clamp(min=0, max=b - a)
            streaming_search(
                method,
                model,
                enc[members, a:b],
                [states[i] for i in members],
                encoder_out_lens=chunk_lens,
                num_active_paths=3,
                fast_beam_config=config,
            )
            if step % 2:
                catch_up = (lens[:1] - a).clamp(min=0, max=b - a)
                streaming_search(
                    method,
                    model,
                    enc[:1, a:b],
                    states[:1],
                    encoder_out_lens=catch_up,
                    num_active_paths=3,
                    fast_beam_config=config,
                )
    assert [s.tokens for s in states] == expected.hyps
    assert [s.timestamps for s in states] == expected.timestamps
