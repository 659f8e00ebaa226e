"""Tensor FSA: construction, OpenFst conversion, trivial graph, LG compilation."""

from __future__ import annotations

import math

import kaldifst
import pytest
import torch

from icefall.decoding.fsa import (
    Fsa,
    add_disambig_symbols,
    build_lexicon_fst,
    compile_LG,
    fsa_from_openfst,
    fsa_from_openfst_text,
    load_fsa,
    make_word_table,
    read_lexicon,
    read_openfst,
    save_fsa,
    trivial_graph,
)


def test_trivial_graph():
    g = trivial_graph(5)
    assert g.num_states == 1 and g.num_arcs == 5
    assert g.labels.tolist() == [1, 2, 3, 4, 5]
    assert g.aux_labels.tolist() == [1, 2, 3, 4, 5]
    assert g.dst.tolist() == [0] * 5 and g.scores.abs().sum() == 0
    assert g.final_scores.tolist() == [0.0]
    assert g.arc_begin.tolist() == [0, 5]


def test_from_arcs_sorts_by_state_and_label():
    fsa = Fsa.from_arcs(
        3, 0, [(1, 2, 7, 0, -1.0), (0, 1, 5, 9, -0.5), (0, 2, 3, 0, 0.0)], {2: -0.25}
    )
    assert fsa.src.tolist() == [0, 0, 1]
    assert fsa.labels.tolist() == [3, 5, 7]
    assert fsa.arc_begin.tolist() == [0, 2, 3, 3]
    assert fsa.final_scores.tolist() == [-math.inf, -math.inf, -0.25]
    with pytest.raises(ValueError, match="outside"):
        Fsa.from_arcs(2, 0, [(0, 5, 1, 1, 0.0)], {})


def test_openfst_conversion_negates_weights(tmp_path):
    text = "0 1 3 4 0.5\n1 2 5 0 1.0\n1 1 2 2\n2 0.25\n"
    fst = kaldifst.compile(text, acceptor=False)
    fsa = fsa_from_openfst(fst)
    assert fsa.num_states == 3 and fsa.start == 0
    assert fsa.labels.tolist() == [3, 2, 5]
    assert fsa.aux_labels.tolist() == [4, 2, 0]
    assert fsa.scores.tolist() == pytest.approx([-0.5, 0.0, -1.0])
    assert fsa.final_scores[2].item() == pytest.approx(-0.25)
    fst.write(str(tmp_path / "a.fst"))
    again = read_openfst(tmp_path / "a.fst")
    assert torch.equal(again.labels, fsa.labels) and torch.equal(again.scores, fsa.scores)
    save_fsa(fsa, tmp_path / "a.pt")
    loaded = load_fsa(tmp_path / "a.pt")
    assert loaded.start == fsa.start and torch.equal(loaded.dst, fsa.dst)


def test_openfst_text_errors():
    with pytest.raises(ValueError, match="line 2"):
        fsa_from_openfst_text("0 1 1 1\n0 1 x\n")


def test_disambig_symbols():
    entries, max_k = add_disambig_symbols(
        [("a", [1]), ("ab", [1, 2]), ("b", [2]), ("bee", [2]), ("c", [3])]
    )
    ks = {w: k for w, _, k in entries}
    assert ks["a"] == 1  # prefix of "ab"
    assert ks["ab"] == 0 and ks["c"] == 0
    assert {ks["b"], ks["bee"]} == {1, 2}  # homophones
    assert max_k == 2


def test_lexicon_fst_maps_tokens_to_words():
    words = make_word_table(["a", "ab"])
    lexicon_fst = build_lexicon_fst([("a", [1]), ("ab", [1, 2])], words, 10)
    fsa = fsa_from_openfst(lexicon_fst)
    first_arcs = fsa.arc_begin[fsa.start], fsa.arc_begin[fsa.start + 1]
    outs = set(fsa.aux_labels[first_arcs[0] : first_arcs[1]].tolist())
    assert {words["a"], words["ab"], words["#0"]} <= outs
    with pytest.raises(ValueError, match="not in the word table"):
        build_lexicon_fst([("zz", [1])], words, 10)


def test_read_lexicon(tmp_path):
    (tmp_path / "lexicon.txt").write_text("HELLO ▁HE LLO\nWORLD ▁WORLD\n")
    assert read_lexicon(tmp_path / "lexicon.txt") == [
        ("HELLO", ["▁HE", "LLO"]),
        ("WORLD", ["▁WORLD"]),
    ]
    (tmp_path / "bad.txt").write_text("LONELY\n")
    with pytest.raises(ValueError, match="without tokens"):
        read_lexicon(tmp_path / "bad.txt")


UNIGRAM_ARPA = """\\data\\
ngram 1=4

\\1-grams:
-1.0 <s>
-0.5 </s>
-0.3 X
-0.6 YZ

\\end\\
"""


def test_compile_LG_unigram(tmp_path):
    arpa = tmp_path / "lm.arpa"
    arpa.write_text(UNIGRAM_ARPA)
    words = make_word_table(["X", "YZ"])
    lg = compile_LG([("X", [1]), ("YZ", [2, 3])], arpa, words, vocab_size=5)
    ln10 = math.log(10)
    assert int(lg.labels.min()) >= 1 and int(lg.labels.max()) <= 4
    # From the start: X (one arc) or YZ (two arcs, word on the first).
    start_arcs = range(int(lg.arc_begin[lg.start]), int(lg.arc_begin[lg.start + 1]))
    by_label = {int(lg.labels[a]): a for a in start_arcs}
    assert set(by_label) == {1, 2}
    assert int(lg.aux_labels[by_label[1]]) == words["X"]
    assert float(lg.scores[by_label[1]]) == pytest.approx(-0.3 * ln10, abs=1e-4)
    assert int(lg.aux_labels[by_label[2]]) == words["YZ"]
    mid = int(lg.dst[by_label[2]])
    mid_arcs = range(int(lg.arc_begin[mid]), int(lg.arc_begin[mid + 1]))
    assert [int(lg.labels[a]) for a in mid_arcs] == [3]
    assert float(lg.final_scores.max()) == pytest.approx(-0.5 * ln10, abs=1e-4)
    with pytest.raises(FileNotFoundError, match="ARPA"):
        compile_LG([("X", [1])], tmp_path / "missing.arpa", words, vocab_size=5)


def test_fsa_to_device_and_scale():
    g = trivial_graph(3)
    lg = Fsa.from_arcs(2, 0, [(0, 1, 1, 1, -2.0)], {1: -1.0})
    scaled = lg.scaled(0.5)
    assert scaled.scores.tolist() == [-1.0] and scaled.final_scores.tolist() == [-math.inf, -0.5]
    assert g.to("cpu").device.type == "cpu"


def test_witten_bell_arpa_is_normalised_and_compiles(tmp_path):
    from icefall.decoding.arpa import estimate, write_arpa

    sentences = [s.split() for s in ["A B C", "A B", "B C A", "C C", "A"]]
    model = estimate(sentences, order=3)

    def prob(history, word):
        gram = history + (word,)
        if gram in model[len(gram)]:
            return 10 ** model[len(gram)][gram][0]
        backoff = model[len(history)][history][1] if history in model[len(history)] else 0.0
        return 10**backoff * prob(history[1:], word)

    for history in [(), ("A",), ("<s>",), ("A", "B"), ("<s>", "C"), ("C", "A")]:
        total = sum(prob(history, w) for w in ["A", "B", "C", "</s>"])
        assert total == pytest.approx(1.0, abs=1e-5), history
    write_arpa(model, tmp_path / "lm" / "G.arpa")
    words = make_word_table(["A", "B", "C"])
    lg = compile_LG([("A", [1]), ("B", [2]), ("C", [3, 1])], tmp_path / "lm/G.arpa", words, 4)
    assert lg.num_arcs > 0 and set(lg.labels.tolist()) <= {0, 1, 2, 3}
    assert set(lg.aux_labels.tolist()) <= {0, words["A"], words["B"], words["C"]}
    # Backoff arcs stay as epsilon arcs without output labels.
    assert (lg.labels == 0).any() and (lg.aux_labels[lg.labels == 0] == 0).all()


def test_search_tables_follow_epsilon_arcs():
    arcs = [
        (0, 1, 0, 0, -1.0),
        (1, 2, 0, 0, -0.5),
        (0, 2, 0, 0, -3.0),
        (1, 3, 5, 7, -0.25),
        (0, 3, 4, 0, 0.0),
    ]
    fsa = Fsa.from_arcs(4, 0, arcs, {2: -0.1, 3: 0.0})
    tables = fsa.search_tables()
    begin, end = tables.closure_begin[0].item(), tables.closure_begin[1].item()
    closure = dict(
        zip(tables.closure_state[begin:end].tolist(), tables.closure_score[begin:end].tolist())
    )
    assert tables.closure_state[begin].item() == 0
    assert closure == pytest.approx({0: 0.0, 1: -1.0, 2: -1.5})
    assert tables.final_scores.tolist() == pytest.approx([-1.6, -0.6, -0.1, 0.0])
    emitting = tables.emit_arcs.tolist()
    assert sorted(fsa.labels[emitting].tolist()) == [4, 5]
    assert tables.emit_begin.tolist() == [0, 1, 2, 2, 2]
    bad = Fsa.from_arcs(2, 0, [(0, 1, 0, 3, 0.0)], {1: 0.0})
    with pytest.raises(ValueError, match="epsilon arcs with output"):
        bad.search_tables()


class FakeSp:
    """sentencepiece stand-in: one token per letter (A=1, B=2, C=3)."""

    def encode(self, word, out_type=int):
        return [ord(ch) - ord("A") + 1 for ch in word]

    def piece_to_id(self, piece):
        return ord(piece) - ord("A") + 1


def test_load_or_compile_LG(tmp_path):
    from icefall.decoding.fsa import load_or_compile_LG, write_symbol_table

    arpa = tmp_path / "G.arpa"
    arpa.write_text(UNIGRAM_ARPA.replace(" YZ", " BC"))
    with pytest.raises(FileNotFoundError, match="ARPA"):
        load_or_compile_LG(tmp_path, tmp_path / "missing.arpa", FakeSp(), 25)
    token_lg, words = load_or_compile_LG(tmp_path, arpa, FakeSp(), 25)
    assert words is None and torch.equal(token_lg.labels, token_lg.aux_labels)
    assert {2, 24} <= set(token_lg.labels.tolist()) <= {0, 2, 3, 24}  # X = 24, B, C
    save_fsa(token_lg, tmp_path / "LG.pt")
    again, words = load_or_compile_LG(tmp_path, tmp_path / "missing.arpa", FakeSp(), 25)
    assert words is None and again.num_arcs == token_lg.num_arcs
    table = make_word_table(["X", "BC"])
    word_lg = compile_LG([("X", [24]), ("BC", [2, 3])], arpa, table, vocab_size=25)
    save_fsa(word_lg, tmp_path / "LG.pt")
    with pytest.raises(FileNotFoundError, match="words.txt"):
        load_or_compile_LG(tmp_path, arpa, FakeSp(), 25)
    write_symbol_table(table, tmp_path / "words.txt")
    _, words = load_or_compile_LG(tmp_path, arpa, FakeSp(), 25)
    assert words == table
