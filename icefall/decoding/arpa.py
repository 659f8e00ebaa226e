"""A small word n-gram estimator that writes ARPA files (interpolated Witten-Bell smoothing).

Enough to build the LG graph of ``fast_beam_search_nbest_LG`` for a small corpus; for big
corpora use a real LM toolkit. Probabilities of seen n-grams are interpolated with the lower
order, and the backoff weight of a history h is ``T(h) / (c(h) + T(h))`` (T = number of distinct
followers, c = count), which makes the ARPA model exactly the interpolated one.

CLI::

  python -m icefall.decoding.arpa --order 3 --text data/lang_bpe_256/transcript_words.txt \\
      --out data/lm/G_3_gram.arpa
"""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

BOS, EOS = "<s>", "</s>"
Ngram = Tuple[str, ...]


def count_ngrams(sentences: Iterable[List[str]], order: int) -> List[Counter]:
    """Counts of n-grams of order 1..order over ``<s> words </s>`` (``<s>`` is no unigram)."""
    counts = [Counter() for _ in range(order)]
    for words in sentences:
        seq = [BOS] + list(words) + [EOS]
        for n in range(1, order + 1):
            for i in range(1 if n == 1 else 0, len(seq) - n + 1):
                counts[n - 1][tuple(seq[i : i + n])] += 1
    return counts


def estimate(
    sentences: Iterable[List[str]], order: int = 3
) -> Dict[int, Dict[Ngram, Tuple[float, float]]]:
    """Witten-Bell model: ``{n: {ngram: (log10 prob, log10 backoff)}}`` (backoff 0 if none)."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    counts = count_ngrams(sentences, order)
    vocab = sorted({g[0] for g in counts[0]} | {EOS})
    if len(vocab) <= 1:
        raise ValueError("no words to estimate an LM from")
    total = sum(c for g, c in counts[0].items())
    probs: List[Dict[Ngram, float]] = [{} for _ in range(order)]
    for w in vocab:
        probs[0][(w,)] = (counts[0][(w,)] + 1) / (total + len(vocab))
    probs[0][(BOS,)] = 0.0
    backoff: List[Dict[Ngram, float]] = [{} for _ in range(order)]
    for n in range(2, order + 1):
        followers: Dict[Ngram, Counter] = defaultdict(Counter)
        for gram, c in counts[n - 1].items():
            followers[gram[:-1]][gram[-1]] += c
        for history, words in followers.items():
            c_h = sum(words.values())
            t_h = len(words)
            alpha = t_h / (c_h + t_h)
            backoff[n - 2][history] = alpha
            for w, c in words.items():
                lower = _prob(probs, backoff, history[1:], w)
                probs[n - 1][history + (w,)] = (c + t_h * lower) / (c_h + t_h)
    model: Dict[int, Dict[Ngram, Tuple[float, float]]] = {}
    for n in range(1, order + 1):
        model[n] = {
            gram: (_log10(p), _log10(backoff[n - 1].get(gram, 1.0)))
            for gram, p in sorted(probs[n - 1].items())
        }
    return model


def _prob(probs, backoff, history: Ngram, word: str) -> float:
    """Interpolated probability of ``word`` after ``history`` from the lower orders."""
    n = len(history) + 1
    gram = history + (word,)
    if gram in probs[n - 1]:
        return probs[n - 1][gram]
    return backoff[n - 2].get(history, 1.0) * _prob(probs, backoff, history[1:], word)


def _log10(p: float) -> float:
    return math.log10(p) if p > 0 else -99.0


def write_arpa(model: Dict[int, Dict[Ngram, Tuple[float, float]]], filename: Path) -> None:
    order = max(model)
    lines = ["\\data\\"] + [f"ngram {n}={len(model[n])}" for n in range(1, order + 1)]
    for n in range(1, order + 1):
        lines += ["", f"\\{n}-grams:"]
        for gram, (logp, logb) in model[n].items():
            text = f"{logp:.6f}\t{' '.join(gram)}"
            lines.append(text + (f"\t{logb:.6f}" if n < order and logb != 0.0 else ""))
    lines += ["", "\\end\\", ""]
    Path(filename).parent.mkdir(parents=True, exist_ok=True)
    Path(filename).write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--text", type=Path, required=True, help="one sentence per line")
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sentences = [line.split() for line in args.text.read_text(encoding="utf-8").splitlines()]
    write_arpa(estimate((s for s in sentences if s), args.order), args.out)


if __name__ == "__main__":
    main()
