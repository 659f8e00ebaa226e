"""A compact weighted FSA in torch tensors, built from OpenFst graphs (kaldifst / kaldilm).

This replaces the parts of k2's ``Fsa`` that transducer decoding needs. Arcs live in flat
tensors sorted by source state (``arc_begin[s]:arc_begin[s + 1]`` are the arcs leaving ``s``);
scores are log-domain (higher is better), i.e. the negated OpenFst tropical weights. Final
states carry a final score (``-inf`` = not final) instead of k2's extra final arcs.

Graphs for ``fast_beam_search``:
  * :func:`trivial_graph` — one state with a self-loop per token (no language model);
  * :func:`compile_LG` — lexicon ∘ ARPA n-gram, determinized and minimized with kaldifst, with
    token ids as labels and word ids as aux labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

FilePath = Union[str, Path]


@dataclass
class Fsa:
    """A weighted transducer in flat tensors (all on one device).

    Attributes:
      start: the start state.
      arc_begin: (num_states + 1,) int64; arcs of state s are ``arc_begin[s]:arc_begin[s+1]``.
      src, dst: (num_arcs,) int64 source / destination states (sorted by ``src``).
      labels: (num_arcs,) int64 input labels (token ids for decoding graphs, 0 = epsilon).
      aux_labels: (num_arcs,) int64 output labels (word ids; 0 = none).
      scores: (num_arcs,) float32 log-domain arc scores.
      final_scores: (num_states,) float32 final scores, ``-inf`` for non-final states.
    """

    start: int
    arc_begin: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    labels: torch.Tensor
    aux_labels: torch.Tensor
    scores: torch.Tensor
    final_scores: torch.Tensor
    _search_tables: Optional[SearchTables] = field(default=None, repr=False, compare=False)

    @property
    def num_states(self) -> int:
        return self.final_scores.numel()

    @property
    def num_arcs(self) -> int:
        return self.src.numel()

    @property
    def device(self) -> torch.device:
        return self.src.device

    @classmethod
    def from_arcs(
        cls,
        num_states: int,
        start: int,
        arcs: Sequence[Tuple[int, int, int, int, float]],
        finals: Dict[int, float],
    ) -> Fsa:
        """Build from ``(src, dst, label, aux, score)`` tuples and ``{state: final_score}``."""
        for a in arcs:
            if not (0 <= a[0] < num_states and 0 <= a[1] < num_states):
                raise ValueError(f"arc {a} refers to a state outside 0..{num_states - 1}")
        if num_states > 0 and not 0 <= start < num_states:
            raise ValueError(f"start state {start} outside 0..{num_states - 1}")
        if arcs:
            src, dst, labels, aux, scores = zip(*arcs)
        else:
            src = dst = labels = aux = scores = ()
        final_scores = torch.full((num_states,), float("-inf"))
        for state, score in finals.items():
            final_scores[state] = score
        return cls.from_tensors(
            start,
            torch.tensor(src, dtype=torch.int64),
            torch.tensor(dst, dtype=torch.int64),
            torch.tensor(labels, dtype=torch.int64),
            torch.tensor(aux, dtype=torch.int64),
            torch.tensor(scores, dtype=torch.float32),
            final_scores,
        )

    @classmethod
    def from_tensors(
        cls,
        start: int,
        src: torch.Tensor,
        dst: torch.Tensor,
        labels: torch.Tensor,
        aux_labels: torch.Tensor,
        scores: torch.Tensor,
        final_scores: torch.Tensor,
    ) -> Fsa:
        """Build from unsorted arc tensors; arcs are stably sorted by (src, label)."""
        num_states = final_scores.numel()
        order = torch.argsort(labels, stable=True)
        order = order[torch.argsort(src[order], stable=True)]
        counts = torch.bincount(src, minlength=num_states)
        arc_begin = torch.zeros(num_states + 1, dtype=torch.int64, device=src.device)
        arc_begin[1:] = torch.cumsum(counts, 0)
        return cls(
            start=start,
            arc_begin=arc_begin,
            src=src[order],
            dst=dst[order],
            labels=labels[order],
            aux_labels=aux_labels[order],
            scores=scores[order].float(),
            final_scores=final_scores.float(),
        )

    def search_tables(self) -> SearchTables:
        """Epsilon closures and emitting arcs for ``fast_beam_search`` (computed once)."""
        if self._search_tables is None:
            self._search_tables = SearchTables.build(self)
        return self._search_tables

    def to(self, device: Union[str, torch.device]) -> Fsa:
        """A copy on ``device``."""
        return replace(
            self,
            _search_tables=None,
            arc_begin=self.arc_begin.to(device),
            src=self.src.to(device),
            dst=self.dst.to(device),
            labels=self.labels.to(device),
            aux_labels=self.aux_labels.to(device),
            scores=self.scores.to(device),
            final_scores=self.final_scores.to(device),
        )

    def scaled(self, scale: float) -> Fsa:
        """A copy with arc and final scores multiplied by ``scale`` (``-inf`` stays ``-inf``)."""
        finals = torch.where(
            torch.isfinite(self.final_scores), self.final_scores * scale, self.final_scores
        )
        return replace(self, scores=self.scores * scale, final_scores=finals, _search_tables=None)

    def as_dict(self) -> Dict[str, torch.Tensor]:
        """Tensors for ``torch.save`` (read back with :meth:`from_dict`)."""
        return {
            "start": torch.tensor(self.start),
            "arc_begin": self.arc_begin,
            "src": self.src,
            "dst": self.dst,
            "labels": self.labels,
            "aux_labels": self.aux_labels,
            "scores": self.scores,
            "final_scores": self.final_scores,
        }

    @classmethod
    def from_dict(cls, d: Dict[str, torch.Tensor]) -> Fsa:
        return cls(start=int(d["start"]), **{k: v for k, v in d.items() if k != "start"})

    def __str__(self) -> str:
        lines = [
            f"{s} {d} {lab} {aux} {sc:.4g}"
            for s, d, lab, aux, sc in zip(
                self.src.tolist(),
                self.dst.tolist(),
                self.labels.tolist(),
                self.aux_labels.tolist(),
                self.scores.tolist(),
            )
        ]
        finals = [
            f"{s} {sc:.4g}" for s, sc in enumerate(self.final_scores.tolist()) if sc != -math.inf
        ]
        return "\n".join([f"start={self.start}"] + lines + finals)


@dataclass
class SearchTables:
    """What ``fast_beam_search`` needs from a graph with input-epsilon arcs (label 0).

    Epsilon arcs (e.g. n-gram backoff arcs) are not expanded into the graph (which would copy
    the arcs of the backoff states into every state); the search follows them on the fly:
    from state s it may emit along the arcs of every state t in the epsilon closure of s,
    adding the best epsilon-path score s -> t.

    Attributes:
      closure_begin: (num_states + 1,) int64; closure entries of s are
        ``closure_begin[s]:closure_begin[s+1]`` (s itself comes first, score 0).
      closure_state: (C,) int64 states t reachable from s by epsilon arcs.
      closure_score: (C,) float best epsilon-path score from s to t.
      emit_begin: (num_states + 1,) int64 CSR over the emitting (label > 0) arcs.
      emit_arcs: (E,) int64 arc indexes of the emitting arcs, grouped by source state.
      final_scores: (num_states,) best final score reachable through the closure.
    """

    closure_begin: torch.Tensor
    closure_state: torch.Tensor
    closure_score: torch.Tensor
    emit_begin: torch.Tensor
    emit_arcs: torch.Tensor
    final_scores: torch.Tensor

    @classmethod
    def build(cls, fsa: Fsa) -> SearchTables:
        device = fsa.device
        num_states = fsa.num_states
        eps = fsa.labels == 0
        if bool((fsa.aux_labels[eps] != 0).any()):
            raise ValueError("epsilon arcs with output (aux) labels are not supported")
        emit = (~eps).nonzero().squeeze(1)
        emit_counts = torch.bincount(fsa.src[emit], minlength=num_states)
        emit_begin = torch.zeros(num_states + 1, dtype=torch.int64, device=device)
        emit_begin[1:] = torch.cumsum(emit_counts, 0)

        # Closure pairs (s, t, score), relaxed along epsilon arcs until nothing improves.
        states = torch.arange(num_states, device=device)
        pair_src, pair_dst = states, states
        pair_score = torch.zeros(num_states, device=device)
        eps_src, eps_dst, eps_score = fsa.src[eps], fsa.dst[eps], fsa.scores[eps]
        eps_order = torch.argsort(eps_src, stable=True)
        eps_src, eps_dst, eps_score = eps_src[eps_order], eps_dst[eps_order], eps_score[eps_order]
        eps_counts = torch.bincount(eps_src, minlength=num_states)
        eps_begin = torch.cumsum(eps_counts, 0) - eps_counts
        frontier = (pair_src, pair_dst, pair_score)
        for _ in range(num_states):
            f_src, f_dst, f_score = frontier
            n = eps_counts[f_dst]
            if int(n.sum()) == 0:
                break
            row = torch.repeat_interleave(torch.arange(f_dst.numel(), device=device), n)
            start = torch.cumsum(n, 0) - n
            arc = eps_begin[f_dst][row] + torch.arange(row.numel(), device=device) - start[row]
            new = (f_src[row], eps_dst[arc], f_score[row] + eps_score[arc])
            all_src = torch.cat([pair_src, new[0]])
            all_dst = torch.cat([pair_dst, new[1]])
            all_score = torch.cat([pair_score, new[2]])
            keys = all_src * num_states + all_dst
            unique_keys, inverse = torch.unique(keys, return_inverse=True)
            best = torch.full((unique_keys.numel(),), float("-inf"), device=device)
            best = best.scatter_reduce(0, inverse, all_score, reduce="amax")
            old_best = torch.full_like(best, float("-inf"))
            old_best[inverse[: pair_src.numel()]] = pair_score
            improved = best > old_best
            pair_src, pair_dst, pair_score = (
                unique_keys // num_states,
                unique_keys % num_states,
                best,
            )
            frontier = (pair_src[improved], pair_dst[improved], pair_score[improved])
            if frontier[0].numel() == 0:
                break
        # Order each state's closure with the state itself first.
        order = torch.argsort(pair_src * 2 + (pair_src != pair_dst).long(), stable=True)
        pair_src, pair_dst, pair_score = pair_src[order], pair_dst[order], pair_score[order]
        closure_counts = torch.bincount(pair_src, minlength=num_states)
        closure_begin = torch.zeros(num_states + 1, dtype=torch.int64, device=device)
        closure_begin[1:] = torch.cumsum(closure_counts, 0)
        finals = torch.full((num_states,), float("-inf"), device=device)
        finals = finals.scatter_reduce(
            0, pair_src, pair_score + fsa.final_scores[pair_dst], reduce="amax"
        )
        return cls(closure_begin, pair_dst, pair_score, emit_begin, emit, finals)


def trivial_graph(max_token: int, device: Union[str, torch.device] = "cpu") -> Fsa:
    """One state with a score-0 self-loop for every token 1..max_token (k2.trivial_graph).

    Use ``max_token = vocab_size - 1``; blank (0) is never a graph label.
    """
    labels = torch.arange(1, max_token + 1, dtype=torch.int64)
    zeros = torch.zeros_like(labels)
    fsa = Fsa.from_tensors(
        0, zeros, zeros, labels, labels.clone(), torch.zeros(max_token), torch.zeros(1)
    )
    return fsa.to(device)


def _parse_weight(text: str) -> float:
    """OpenFst tropical weight (a cost) -> log-domain score."""
    value = float(text)
    return -value if math.isfinite(value) else -math.inf


def fsa_from_openfst_text(text: str) -> Fsa:
    """Parse the AT&T text form (``src dst ilabel olabel [weight]`` / ``state [weight]``).

    The first arc's source (or the first line's state) is the start state, as in OpenFst.
    """
    arcs: List[Tuple[int, int, int, int, float]] = []
    finals: Dict[int, float] = {}
    start: Optional[int] = None
    num_states = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) >= 4:
                src, dst, ilabel, olabel = (int(f) for f in fields[:4])
                weight = _parse_weight(fields[4]) if len(fields) > 4 else 0.0
                arcs.append((src, dst, ilabel, olabel, weight))
                num_states = max(num_states, src + 1, dst + 1)
                state = src
            elif len(fields) in (1, 2):
                state = int(fields[0])
                finals[state] = _parse_weight(fields[1]) if len(fields) == 2 else 0.0
                num_states = max(num_states, state + 1)
            else:
                raise ValueError("expected 1, 2, 4 or 5 fields")
        except ValueError as e:
            raise ValueError(f"bad OpenFst text line {line_no}: {line!r} ({e})") from e
        if start is None:
            start = state
    return Fsa.from_arcs(num_states, start or 0, arcs, finals)


def fsa_from_openfst(fst) -> Fsa:
    """Convert a kaldifst ``StdVectorFst`` (tropical weights) into an :class:`Fsa`."""
    fsa = fsa_from_openfst_text(str(fst))
    if fst.num_states > 0 and fsa.start != fst.start:
        fsa = replace(fsa, start=fst.start)
    return fsa


def read_openfst(filename: FilePath) -> Fsa:
    """Read a binary OpenFst file (e.g. written by kaldilm or Kaldi) into an :class:`Fsa`."""
    import kaldifst

    return fsa_from_openfst(kaldifst.StdVectorFst.read(str(filename)))


def read_symbol_table(filename: FilePath) -> Dict[str, int]:
    """``symbol id`` per line (words.txt / tokens.txt) -> dict."""
    table: Dict[str, int] = {}
    for line_no, line in enumerate(Path(filename).read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{filename}:{line_no}: expected 'symbol id', got {line!r}")
        table[fields[0]] = int(fields[1])
    return table


def write_symbol_table(table: Dict[str, int], filename: FilePath) -> None:
    lines = [f"{sym} {i}" for sym, i in sorted(table.items(), key=lambda kv: kv[1])]
    Path(filename).write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_word_table(words: Iterable[str]) -> Dict[str, int]:
    """words.txt layout: ``<eps>`` 0, the words in sorted order, then ``#0``, ``<s>``, ``</s>``."""
    special = {"<eps>", "#0", "<s>", "</s>"}
    table = {"<eps>": 0}
    for w in sorted(set(words) - special):
        table[w] = len(table)
    for sym in ("#0", "<s>", "</s>"):
        table[sym] = len(table)
    return table


def add_disambig_symbols(
    lexicon: Sequence[Tuple[str, List[int]]],
) -> Tuple[List[Tuple[str, List[int], int]], int]:
    """Number the pronunciations that need a disambiguation symbol (Kaldi's add_lex_disambig).

    A pronunciation needs one if another word has the same token sequence or it is a proper
    prefix of another word's sequence.

    Returns:
      ``(word, tokens, k)`` with k = 0 (none) or the index of ``#k`` (1, 2, ...), and the largest
      k used.
    """
    counts: Dict[Tuple[int, ...], int] = {}
    prefixes = set()
    for _, tokens in lexicon:
        seq = tuple(tokens)
        counts[seq] = counts.get(seq, 0) + 1
        for i in range(1, len(seq)):
            prefixes.add(seq[:i])
    next_k: Dict[Tuple[int, ...], int] = {}
    max_k = 0
    out = []
    for word, tokens in lexicon:
        seq = tuple(tokens)
        k = 0
        if counts[seq] > 1 or seq in prefixes:
            k = next_k.get(seq, 0) + 1
            next_k[seq] = k
            max_k = max(max_k, k)
        out.append((word, list(tokens), k))
    return out, max_k


def build_lexicon_fst(
    lexicon: Sequence[Tuple[str, List[int]]],
    word_table: Dict[str, int],
    first_token_disambig_id: int,
):
    """L with disambiguation symbols as a kaldifst ``StdVectorFst`` (tokens in, words out).

    Each word is a path from the loop state 0 back to 0: the first token arc outputs the word,
    a ``#k`` token ends ambiguous pronunciations, and ``#0:#0`` loops on state 0 so G's backoff
    arcs survive composition. Token ids are used unchanged (they must be >= 1).
    """
    import kaldifst

    entries, _ = add_disambig_symbols(lexicon)
    fst = kaldifst.StdVectorFst()
    loop = fst.add_state()
    fst.start = loop
    fst.set_final(loop, 0.0)
    word_disambig = word_table["#0"]
    fst.add_arc(loop, kaldifst.StdArc(first_token_disambig_id, word_disambig, 0.0, loop))
    for word, tokens, k in entries:
        if word not in word_table:
            raise ValueError(f"lexicon word {word!r} is not in the word table")
        if not tokens or min(tokens) < 1:
            raise ValueError(f"word {word!r} needs token ids >= 1, got {tokens}")
        labels = tokens + ([first_token_disambig_id + k] if k > 0 else [])
        state = loop
        for i, label in enumerate(labels):
            next_state = loop if i == len(labels) - 1 else fst.add_state()
            olabel = word_table[word] if i == 0 else 0
            fst.add_arc(state, kaldifst.StdArc(label, olabel, 0.0, next_state))
            state = next_state
    return fst


def compile_LG(
    lexicon: Sequence[Tuple[str, List[int]]],
    arpa_file: FilePath,
    word_table: Dict[str, int],
    vocab_size: int,
    max_order: int = -1,
    word_labels: bool = True,
) -> Fsa:
    """Compile LG for ``fast_beam_search``: labels = token ids, aux labels = word ids.

    Steps (icefall's compile_lg.py with kaldifst instead of k2): G from the ARPA via kaldilm
    (``#0`` on backoff arcs), L with disambiguation symbols, compose; then disambiguation
    symbols become epsilon arcs, which stay in the graph (``fast_beam_search`` follows them).
    The graph is not determinized: determinization would delay word labels onto
    disambiguation arcs, which a one-aux-label-per-arc FSA cannot keep once they become
    epsilons. ``fast_beam_search`` does not need a deterministic graph.

    Args:
      lexicon: ``(word, token ids)`` pronunciations; token ids in 1..vocab_size-1.
      arpa_file: ARPA n-gram LM over the words of ``word_table``.
      word_table: words.txt mapping (see :func:`make_word_table`); must contain ``#0``.
      vocab_size: number of tokens (disambiguation ids start at ``vocab_size``).
      max_order: highest n-gram order of the ARPA to use (-1 = all).
      word_labels: keep word ids as aux labels (graph not determinized: from the unigram
        state every word is its own arc, which makes the search slow for large vocabularies).
        With False, LG is projected on the tokens, determinized and minimized (each state has
        at most one arc per token) and aux labels equal the labels; use it when the words can
        be read back from the tokens (BPE lexicons: ``sp.decode``).
    Returns:
      The LG graph with log-domain scores (LM log-probs, natural log).
    """
    import tempfile

    import kaldifst
    import kaldilm

    arpa_file = Path(arpa_file)
    if not arpa_file.is_file():
        raise FileNotFoundError(f"ARPA language model {arpa_file} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        words_txt = Path(tmp) / "words.txt"
        write_symbol_table(word_table, words_txt)
        g_text = kaldilm.arpa2fst(
            str(arpa_file),
            disambig_symbol="#0",
            read_symbol_table=str(words_txt),
            max_order=max_order,
        )
    G = kaldifst.compile(g_text, acceptor=False)
    kaldifst.arcsort(G, sort_type="ilabel")
    L = build_lexicon_fst(lexicon, word_table, first_token_disambig_id=vocab_size)
    kaldifst.arcsort(L, sort_type="olabel")
    LG = kaldifst.compose(L, G)
    kaldifst.connect(LG)
    lg = fsa_from_openfst(LG)
    if word_labels:
        return _remove_disambig(lg, vocab_size, word_table["#0"])
    token_lg = _determinized_token_acceptor(lg)
    tokens = token_lg.labels.clone()
    tokens[tokens >= vocab_size] = 0
    return Fsa.from_tensors(
        token_lg.start,
        token_lg.src,
        token_lg.dst,
        tokens,
        tokens.clone(),
        token_lg.scores,
        token_lg.final_scores,
    )


def _determinized_token_acceptor(lg: Fsa) -> Fsa:
    """Project on the input labels, determinize and minimize (tropical) with kaldifst."""
    import kaldifst

    lines = [
        f"{s} {d} {i} {i} {-w}"
        for s, d, i, w in zip(
            lg.src.tolist(), lg.dst.tolist(), lg.labels.tolist(), lg.scores.tolist()
        )
    ]
    lines += [f"{s} {-w}" for s, w in enumerate(lg.final_scores.tolist()) if w != -math.inf]
    # OpenFst text takes the first line's state as the start state.
    lines.sort(key=lambda line: int(line.split(maxsplit=1)[0]) != lg.start)
    fst = kaldifst.compile("\n".join(lines) + "\n", acceptor=False)
    det = kaldifst.determinize(fst)
    kaldifst.minimize(det)
    kaldifst.arcsort(det, sort_type="ilabel")
    return fsa_from_openfst(det)


def _remove_disambig(lg: Fsa, vocab_size: int, first_word_disambig: int) -> Fsa:
    """Turn disambiguation labels into epsilons (label 0 / aux label 0).

    The epsilon arcs are kept: ``fast_beam_search`` follows them on the fly (see
    :class:`SearchTables`), so the graph does not grow the way epsilon removal would make it
    (every state would get a copy of its backoff states' arcs).
    """
    labels = lg.labels.clone()
    aux = lg.aux_labels.clone()
    labels[labels >= vocab_size] = 0
    aux[aux >= first_word_disambig] = 0
    return Fsa.from_tensors(lg.start, lg.src, lg.dst, labels, aux, lg.scores, lg.final_scores)


def read_lexicon(filename: FilePath) -> List[Tuple[str, List[str]]]:
    """``word tok1 tok2 ...`` per line (icefall's lexicon.txt)."""
    entries = []
    for line_no, line in enumerate(Path(filename).read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ValueError(f"{filename}:{line_no}: word without tokens: {line!r}")
        entries.append((fields[0], fields[1:]))
    return entries


def lexicon_from_bpe(words: Iterable[str], sp) -> List[Tuple[str, List[int]]]:
    """Pronunciations of ``words`` as the sentencepiece ids ``sp.encode(word)``."""
    return [(w, sp.encode(w, out_type=int)) for w in words]


def save_fsa(fsa: Fsa, filename: FilePath) -> None:
    torch.save(fsa.as_dict(), str(filename))


def load_fsa(filename: FilePath, device: Union[str, torch.device] = "cpu") -> Fsa:
    return Fsa.from_dict(torch.load(str(filename), map_location=device, weights_only=True))


def arpa_words(arpa_file: FilePath) -> List[str]:
    """The words of an ARPA file's unigram section, without ``<s>``, ``</s>`` and ``<unk>``."""
    words: List[str] = []
    in_unigrams = False
    with open(arpa_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                in_unigrams = line == "\\1-grams:"
                continue
            fields = line.split()
            if in_unigrams and len(fields) >= 2 and fields[1] not in ("<s>", "</s>", "<unk>"):
                words.append(fields[1])
    return words


def load_or_compile_LG(
    lang_dir: FilePath, arpa_file: FilePath, sp, vocab_size: int
) -> Tuple[Fsa, Optional[Dict[str, int]]]:
    """LG for ``fast_beam_search_nbest_LG`` and its word table (None: the aux labels are
    tokens, read words with ``sp.decode``).

    Uses ``lang_dir/LG.pt`` when it exists (written by ``python -m icefall.decoding.fsa``; a
    word-labelled LG also needs ``lang_dir/words.txt``). Otherwise compiles a determinized token
    LG from ``arpa_file`` (see :func:`compile_LG_for_lang_dir`).
    """
    lang_dir = Path(lang_dir)
    if (lang_dir / "LG.pt").is_file():
        lg = load_fsa(lang_dir / "LG.pt")
        if torch.equal(lg.labels, lg.aux_labels):
            return lg, None
        if not (lang_dir / "words.txt").is_file():
            raise FileNotFoundError(f"{lang_dir}/LG.pt has word labels but words.txt is missing")
        return lg, read_symbol_table(lang_dir / "words.txt")
    if not Path(arpa_file).is_file():
        raise FileNotFoundError(
            f"fast_beam_search_nbest_LG needs {lang_dir}/LG.pt, or an ARPA LM to compile it "
            f"from: {arpa_file} does not exist (set --lm-arpa, or estimate one from "
            f"transcripts: python -m icefall.decoding.arpa --order 3 --text "
            f"{lang_dir}/transcript_words.txt --out {arpa_file})"
        )
    lg, _ = compile_LG_for_lang_dir(lang_dir, arpa_file, sp, vocab_size, word_labels=False)
    return lg, None


def compile_LG_for_lang_dir(
    lang_dir: FilePath, arpa_file: FilePath, sp, vocab_size: int, word_labels: bool = False
) -> Tuple[Fsa, Dict[str, int]]:
    """Compile LG from an ARPA file for a BPE lang dir.

    Pronunciations come from ``lang_dir/lexicon.txt`` (BPE pieces) if present, else every ARPA
    word is spelled with ``sp.encode``. Returns the graph and its word table.
    """
    lexicon_file = Path(lang_dir) / "lexicon.txt"
    if lexicon_file.is_file():
        lexicon = [
            (word, [sp.piece_to_id(p) for p in pieces])
            for word, pieces in read_lexicon(lexicon_file)
        ]
    else:
        lexicon = lexicon_from_bpe(arpa_words(arpa_file), sp)
    lexicon = [(w, toks) for w, toks in lexicon if toks and min(toks) > 0]
    words = make_word_table(w for w, _ in lexicon)
    return compile_LG(lexicon, arpa_file, words, vocab_size, word_labels=word_labels), words


def main() -> None:
    """CLI: compile ``<lang-dir>/LG.pt`` (and words.txt for a word-labelled LG) once."""
    import argparse

    import sentencepiece as spm

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--lang-dir", type=Path, required=True, help="has bpe.model")
    parser.add_argument("--arpa", type=Path, required=True, help="word n-gram LM (ARPA)")
    parser.add_argument(
        "--word-labels",
        action="store_true",
        help="keep word ids as aux labels (slow search for large vocabularies)",
    )
    args = parser.parse_args()
    sp = spm.SentencePieceProcessor()
    sp.load(str(args.lang_dir / "bpe.model"))
    lg, words = compile_LG_for_lang_dir(
        args.lang_dir, args.arpa, sp, sp.get_piece_size(), word_labels=args.word_labels
    )
    save_fsa(lg, args.lang_dir / "LG.pt")
    if args.word_labels:
        write_symbol_table(words, args.lang_dir / "words.txt")
    print(f"wrote {args.lang_dir / 'LG.pt'}: {lg.num_states} states, {lg.num_arcs} arcs")


if __name__ == "__main__":
    main()
