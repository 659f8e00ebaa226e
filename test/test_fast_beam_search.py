"""FSA-based fast beam search: exactness with a wide beam, pruning limits, n-best, LG graphs."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from icefall.decoding import (
    compile_LG,
    fast_beam_search,
    fast_beam_search_nbest,
    fast_beam_search_nbest_LG,
    fast_beam_search_nbest_oracle,
    fast_beam_search_one_best,
    modified_beam_search,
    trivial_graph,
)
from icefall.decoding.fsa import make_word_table
from icefall.decoding.toy_models import ToyTransducer
from icefall.utils import DecodingResults

WIDE = dict(beam=1e9, max_states=10**6, max_contexts=10**6)


def frame_log_probs(model, enc, t, ctx):
    dec = model.joiner.decoder_proj(model.decoder(torch.tensor([ctx]))[:, 0])
    logits = model.joiner(model.joiner.encoder_proj(enc[:, t]), dec, project_input=False)
    return logits.log_softmax(-1)[0]


def all_alignments(model, enc, vocab, context_size=2):
    """Every one-symbol-per-frame alignment: (token sequence, score, frames of tokens)."""
    out = []
    for alignment in itertools.product(range(vocab), repeat=enc.size(1)):
        ys = [-1] * (context_size - 1) + [0]
        score, frames = 0.0, []
        for t, tok in enumerate(alignment):
            score += float(frame_log_probs(model, enc, t, ys[-context_size:])[tok])
            if tok:
                ys.append(tok)
                frames.append(t)
        out.append((tuple(ys[context_size:]), score, frames))
    return out


@pytest.fixture(scope="module")
def small_case():
    torch.manual_seed(5)
    model = ToyTransducer(vocab_size=4, sharpness=2.0, seed=5)
    enc = torch.randn(1, 5, 16)
    with torch.no_grad():
        alignments = all_alignments(model, enc, 4)
    return model, enc, alignments


def test_wide_beam_one_best_is_the_best_alignment(small_case):
    model, enc, alignments = small_case
    best_seq, best_score, best_frames = max(alignments, key=lambda a: a[1])
    with torch.no_grad():
        lattice = fast_beam_search(model, trivial_graph(3), enc, torch.tensor([5]), **WIDE)[0]
        res = fast_beam_search_one_best(
            model, trivial_graph(3), enc, torch.tensor([5]), return_timestamps=True, **WIDE
        )
    path = lattice.best_path()
    assert tuple(path.tokens) == best_seq
    assert path.score == pytest.approx(best_score, abs=1e-4)
    assert isinstance(res, DecodingResults)
    assert res.hyps == [list(best_seq)] and res.timestamps == [best_frames]


def test_lattice_sequence_scores_sum_over_alignments(small_case):
    model, enc, alignments = small_case
    totals: dict = {}
    for seq, score, _ in alignments:
        totals[seq] = float(
            torch.logaddexp(torch.tensor(totals.get(seq, -math.inf)), torch.tensor(score))
        )
    seqs = sorted(totals, key=totals.get, reverse=True)[:20]
    with torch.no_grad():
        lattice = fast_beam_search(model, trivial_graph(3), enc, torch.tensor([5]), **WIDE)[0]
    got = lattice.sequence_scores(seqs)
    assert got.tolist() == pytest.approx([totals[s] for s in seqs], abs=1e-4)
    # Sampling with scale 1 returns lattice paths; their sequences are the frequent ones.
    sampled = lattice.sample_sequences(300, 1.0, generator=torch.Generator().manual_seed(0))
    assert set(sampled) <= set(totals)
    assert seqs[0] in sampled


@pytest.fixture(scope="module")
def peaky_batch():
    torch.manual_seed(1)
    model = ToyTransducer(vocab_size=10, sharpness=12.0, seed=2)
    enc = torch.randn(6, 32, 16) * 2
    lens = torch.tensor([32, 20, 27, 9, 31, 14])
    return model, enc, lens


def test_trivial_graph_wide_beam_agrees_with_modified_beam_search(peaky_batch):
    model, enc, lens = peaky_batch
    with torch.no_grad():
        fast = fast_beam_search_one_best(model, trivial_graph(9), enc, lens, 20.0, 256, 64)
        beam = modified_beam_search(model, enc, lens, beam=8)
    assert fast == beam


def test_batched_equals_one_by_one(peaky_batch):
    model, enc, lens = peaky_batch
    graph = trivial_graph(9)
    with torch.no_grad():
        one_best = fast_beam_search_one_best(model, graph, enc, lens, 4.0, 16, 4)
        nbest = fast_beam_search_nbest(model, graph, enc, lens, 4.0, 16, 4, num_paths=20)
        for i, n in enumerate(lens.tolist()):
            x, x_lens = enc[i : i + 1, :n], torch.tensor([n])
            assert fast_beam_search_one_best(model, graph, x, x_lens, 4.0, 16, 4) == [one_best[i]]
            assert fast_beam_search_nbest(model, graph, x, x_lens, 4.0, 16, 4, 20) == [nbest[i]]


def test_pruning_limits(peaky_batch):
    model, enc, lens = peaky_batch
    graph = trivial_graph(9)
    with torch.no_grad():
        lattices = fast_beam_search(model, graph, enc, lens, beam=8.0, max_states=6, max_contexts=3)
    for lattice in lattices:
        sizes = [b - a for a, b in zip(lattice.node_begin[:-1], lattice.node_begin[1:])]
        assert max(sizes[:-1]) <= 6
        assert not lattice.is_empty()
        assert lattice.num_arc_frames == len(sizes) - 1


def test_nbest_and_oracle(peaky_batch):
    model, enc, lens = peaky_batch
    graph = trivial_graph(9)
    from kaldialign import edit_distance

    with torch.no_grad():
        nbest = fast_beam_search_nbest(model, graph, enc, lens, 8.0, 32, 8, num_paths=50)
        refs = [hyp[1:] + [3] for hyp in nbest]  # references the n-best paths do not match
        oracle = fast_beam_search_nbest_oracle(
            model, graph, enc, lens, 8.0, 32, 8, num_paths=50, ref_texts=refs
        )
    for hyp, orc, ref in zip(nbest, oracle, refs):
        assert all(0 < tok < 10 for tok in hyp)
        assert edit_distance(ref, orc)["total"] <= edit_distance(ref, hyp)["total"]


ARPA = r"""
\data\
ngram 1=6
ngram 2=5

\1-grams:
-1.0 <s> -0.3
-0.6 </s>
-0.6 A -0.2
-0.7 B -0.25
-0.9 AB -0.2
-0.8 C -0.1

\2-grams:
-0.2 <s> A
-0.3 A B
-0.4 B </s>
-0.5 AB </s>
-0.1 C C

\end\
"""

LEXICON = [("A", [1]), ("B", [2]), ("AB", [1, 2]), ("C", [3, 4])]


def arpa_log_prob(words):
    """Natural-log bigram probability (with <s>, </s>) of the ARPA above."""
    uni = {"<s>": (-1.0, -0.3), "</s>": (-0.6, 0.0), "A": (-0.6, -0.2), "B": (-0.7, -0.25)}
    uni.update({"AB": (-0.9, -0.2), "C": (-0.8, -0.1)})
    bi = {("<s>", "A"): -0.2, ("A", "B"): -0.3, ("B", "</s>"): -0.4, ("AB", "</s>"): -0.5}
    bi[("C", "C")] = -0.1
    total = 0.0
    seq = ["<s>"] + list(words) + ["</s>"]
    for h, w in zip(seq[:-1], seq[1:]):
        total += bi[(h, w)] if (h, w) in bi else uni[h][1] + uni[w][0]
    return total * math.log(10)


@pytest.fixture(scope="module")
def lg_graph(tmp_path_factory):
    arpa = Path(tmp_path_factory.mktemp("lm")) / "G.arpa"
    arpa.write_text(ARPA.lstrip())
    words = make_word_table(w for w, _ in LEXICON)
    return compile_LG(LEXICON, arpa, words, vocab_size=6), words


def test_LG_outputs_only_lexicon_words_and_follows_lm_scale(lg_graph):
    lg, words = lg_graph
    id2word = {i: w for w, i in words.items()}
    torch.manual_seed(4)
    model = ToyTransducer(vocab_size=6, sharpness=3.0, seed=4)
    enc = torch.randn(3, 8, 16) * 2
    lens = torch.tensor([8, 6, 8])
    lm_parts = []
    for scale in (0.0, 0.5, 2.0, 8.0):
        with torch.no_grad():
            lattices = fast_beam_search(model, lg.scaled(scale), enc, lens, **WIDE)
        paths = [lat.best_path() for lat in lattices]
        for path in paths:
            assert path.words, "a complete path always exists with 6+ frames"
            names = [id2word[w] for w in path.words]
            assert set(names) <= {"A", "B", "AB", "C"}
            assert 5 not in path.tokens  # token 5 is in no word
            assert path.lm_score == pytest.approx(scale * arpa_log_prob(names), abs=1e-4)
        lm_parts.append([arpa_log_prob([id2word[w] for w in p.words]) for p in paths])
    # A larger LM scale never picks a sequence the LM likes less.
    for small, large in zip(lm_parts[:-1], lm_parts[1:]):
        assert all(b >= a - 1e-5 for a, b in zip(small, large))
    assert lm_parts[0] != lm_parts[-1]

    with torch.no_grad():
        nbest_words = fast_beam_search_nbest_LG(
            model, lg.scaled(0.5), enc, lens, 20.0, 64, 16, num_paths=50, nbest_scale=1.0
        )
    for hyp in nbest_words:
        assert hyp and {id2word[w] for w in hyp} <= {"A", "B", "AB", "C"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(peaky_batch):
    model, enc, lens = peaky_batch
    with torch.no_grad():
        cpu = fast_beam_search_one_best(model, trivial_graph(9), enc, lens, 8.0, 32, 8)
        model_gpu = ToyTransducer(vocab_size=10, sharpness=12.0, seed=2).cuda()
        gpu = fast_beam_search_one_best(
            model_gpu, trivial_graph(9, "cuda"), enc.cuda(), lens.cuda(), 8.0, 32, 8
        )
    assert cpu == gpu


def segmentations(tokens, lexicon):
    """Every way to spell ``tokens`` as a sequence of lexicon words."""
    if not tokens:
        return [[]]
    out = []
    for word, spelling in lexicon:
        if list(tokens[: len(spelling)]) == spelling:
            out += [[word] + rest for rest in segmentations(tokens[len(spelling) :], lexicon)]
    return out


def test_token_LG_scores_best_word_segmentation(tmp_path):
    arpa = tmp_path / "G.arpa"
    arpa.write_text(ARPA.lstrip())
    words = make_word_table(w for w, _ in LEXICON)
    token_lg = compile_LG(LEXICON, arpa, words, vocab_size=6, word_labels=False)
    assert torch.equal(token_lg.labels, token_lg.aux_labels)
    torch.manual_seed(4)
    model = ToyTransducer(vocab_size=6, sharpness=3.0, seed=4)
    enc = torch.randn(3, 8, 16) * 2
    lens = torch.tensor([8, 6, 8])
    with torch.no_grad():
        lattices = fast_beam_search(model, token_lg, enc, lens, **WIDE)
    for lattice in lattices:
        path = lattice.best_path()
        segs = segmentations(path.tokens, LEXICON)
        assert segs, f"{path.tokens} is not a sequence of lexicon words"
        best_lm = max(arpa_log_prob(seg) for seg in segs)
        assert path.lm_score == pytest.approx(best_lm, abs=1e-4)
