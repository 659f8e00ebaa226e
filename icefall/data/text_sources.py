"""Freely licensed English sentences from Debian packages, normalised LibriSpeech-style.

Sources (both in Debian main):

- ``wordnet-base``: the example sentences quoted in the glosses of WordNet 3.0
  (``/usr/share/wordnet/data.{noun,verb,adj,adv}``); WordNet 3.0 licence (permissive).
- ``sword-text-web``: the World English Bible (SWORD zText module ``engWEB2015eb``);
  public domain. The module is read here directly (zlib blocks), no SWORD tools needed.

A package is used from its installed location when present, otherwise it is fetched with
``apt-get download`` and unpacked with ``dpkg -x`` into a cache directory (no root needed).

A sentence is kept only when its raw form is safe to speak (letters and basic punctuation, no
digits, no all-caps words, no abbreviations) and it has 4-24 words. The raw (cased) text is what a
TTS voice speaks; the normalised text (A-Z, apostrophe, space) is the transcript.
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

WORDNET_PACKAGE = "wordnet-base"
WEB_PACKAGE = "sword-text-web"
WORDNET_DIR = Path("usr/share/wordnet")
WEB_MODULE_DIR = Path("usr/share/sword/modules/texts/ztext/engWEB2015eb")

MIN_WORDS = 4
MAX_WORDS = 24

# Characters allowed in the raw text after quote normalisation.
_SAFE_RAW = re.compile(r"^[A-Za-z ,;:!?.'\-]+$")
_ALL_CAPS_WORD = re.compile(r"\b[A-Z]{2,}\b")
_INTERNAL_DOT = re.compile(r"\.\s*\S")
_QUOTE_MAP = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": " - ", "\u2013": "-"}
)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


@dataclass(frozen=True)
class Sentence:
    """One sentence: ``text`` is the transcript, ``raw`` the cased text to speak."""

    text: str
    raw: str
    source: str


def normalise(raw: str) -> str:
    """LibriSpeech-style transcript: upper-case A-Z, in-word apostrophes, single spaces.

    Hyphens become spaces; every other character is dropped.
    """
    text = raw.translate(_QUOTE_MAP).upper().replace("-", " ")
    text = re.sub(r"[^A-Z' ]", " ", text)
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


def clean_raw(raw: str) -> str | None:
    """Returns the speakable form of ``raw`` or None when it is not TTS-safe.

    Double quotes and brackets are removed, curly quotes straightened, the first letter
    capitalised and a final full stop added when the sentence has no final punctuation.
    """
    text = raw.translate(_QUOTE_MAP).replace('"', "").replace("(", "").replace(")", "")
    text = re.sub(r"\s+", " ", text).strip().lstrip("'-,;:. ")
    if not text or not _SAFE_RAW.match(text) or _ALL_CAPS_WORD.search(text):
        return None
    body = text.rstrip(".!?")
    if _INTERNAL_DOT.search(body) or "--" in text:
        return None
    n_words = len(normalise(text).split())
    if not MIN_WORDS <= n_words <= MAX_WORDS:
        return None
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text = text.rstrip(",;:- ") + "."
    return text


def fetch_package(package: str, probe: Path, cache_dir: Path) -> Path:
    """Returns a root directory under which ``probe`` (a path relative to /) exists.

    Uses the installed package when ``/probe`` exists, else ``apt-get download`` + ``dpkg -x``
    into ``cache_dir/package`` (kept for later runs).
    """
    if (Path("/") / probe).exists():
        return Path("/")
    root = cache_dir / package
    if (root / probe).exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    logging.info(f"fetching {package} with apt-get download into {root}")
    try:
        subprocess.run(
            ["apt-get", "download", package], cwd=root, check=True, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise RuntimeError(
            f"could not download the Debian package {package} ({detail.strip()}); "
            f"install it with: sudo apt-get install {package}"
        ) from e
    debs = sorted(root.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} produced no .deb in {root}")
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True)
    if not (root / probe).exists():
        raise RuntimeError(f"{debs[-1]} has no {probe}")
    return root


def wordnet_examples(wordnet_dir: Path) -> Iterator[str]:
    """Yields the quoted example sentences from the WordNet data files in ``wordnet_dir``."""
    for pos in ("noun", "verb", "adj", "adv"):
        with open(wordnet_dir / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue
                gloss = line.split(" | ", 1)[1]
                yield from re.findall(r'"([^"]+)"', gloss)


def _read_ztext_verses(module_dir: Path, testament: str) -> Iterator[str]:
    """Yields the OSIS markup of every verse of one testament (``ot``/``nt``) of a zText module.

    ``.bzs``: per block (offset, compressed size, size) as 3 little-endian uint32;
    ``.bzz``: zlib-compressed blocks; ``.bzv``: per verse (block, offset uint32, size uint16).
    """
    bzs = (module_dir / f"{testament}.bzs").read_bytes()
    bzz = (module_dir / f"{testament}.bzz").read_bytes()
    bzv = (module_dir / f"{testament}.bzv").read_bytes()
    blocks: dict[int, bytes] = {}
    for i in range(len(bzv) // 10):
        block, start, size = struct.unpack_from("<IIH", bzv, i * 10)
        if size == 0:
            continue
        if block not in blocks:
            offset, csize, _ = struct.unpack_from("<III", bzs, block * 12)
            blocks[block] = zlib.decompress(bzz[offset : offset + csize])
        yield blocks[block][start : start + size].decode("utf-8", errors="replace")


def _osis_to_text(markup: str) -> str:
    """Plain text of an OSIS fragment without notes, titles and headings."""
    markup = re.sub(r"<note\b.*?</note>", " ", markup, flags=re.S)
    markup = re.sub(r"<title\b.*?</title>", " ", markup, flags=re.S)
    markup = re.sub(r"<[^>]+>", "", markup)
    return re.sub(r"\s+", " ", markup.translate(_QUOTE_MAP))


def bible_sentences(module_dir: Path) -> Iterator[str]:
    """Yields the sentences of the World English Bible module in ``module_dir``."""
    for testament in ("ot", "nt"):
        if not (module_dir / f"{testament}.bzs").exists():
            continue
        text = " ".join(_osis_to_text(v) for v in _read_ztext_verses(module_dir, testament))
        for paragraph in re.split(r"\s*[\u00b6]\s*", text):
            yield from _SENTENCE_END.split(paragraph)


def collect_sentences(cache_dir: Path) -> list[Sentence]:
    """All distinct TTS-safe sentences of WordNet and the WEB, sorted by transcript.

    When two raw forms normalise to the same transcript, the first seen is kept.
    """
    wordnet_root = fetch_package(WORDNET_PACKAGE, WORDNET_DIR / "data.noun", cache_dir)
    web_root = fetch_package(WEB_PACKAGE, WEB_MODULE_DIR / "nt.bzz", cache_dir)
    sources = (
        ("wordnet", wordnet_examples(wordnet_root / WORDNET_DIR)),
        ("web", bible_sentences(web_root / WEB_MODULE_DIR)),
    )
    by_text: dict[str, Sentence] = {}
    for name, raws in sources:
        for raw in raws:
            cleaned = clean_raw(raw)
            if cleaned is None:
                continue
            text = normalise(cleaned)
            by_text.setdefault(text, Sentence(text=text, raw=cleaned, source=name))
    return [by_text[t] for t in sorted(by_text)]


def sentence_split(text: str, dev_permille: int = 20, test_permille: int = 20) -> str:
    """``train``, ``dev`` or ``test``: a deterministic split by the md5 of the transcript."""
    bucket = int(hashlib.md5(text.encode()).hexdigest()[:8], 16) % 1000
    if bucket < dev_permille:
        return "dev"
    if bucket < dev_permille + test_permille:
        return "test"
    return "train"


def _rules_version() -> str:
    """md5 of this module: a cached sentence list made by other rules is rebuilt."""
    return hashlib.md5(Path(__file__).read_bytes()).hexdigest()[:12]


def write_sentences(sentences: list[Sentence], path: Path) -> None:
    """Writes a ``# rules <version>`` line, then ``TEXT<TAB>raw<TAB>source`` lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"# rules {_rules_version()}\n")
        for s in sentences:
            f.write(f"{s.text}\t{s.raw}\t{s.source}\n")
    tmp.replace(path)


def read_sentences(path: Path) -> list[Sentence]:
    """Reads a file written by :func:`write_sentences`."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            text, raw, source = line.rstrip("\n").split("\t")
            out.append(Sentence(text=text, raw=raw, source=source))
    return out


def load_sentences(cache_dir: Path) -> list[Sentence]:
    """The sentence list, cached as ``cache_dir/sentences.tsv`` (rebuilt when the rules change)."""
    path = cache_dir / "sentences.tsv"
    if not path.exists() or path.open().readline().strip() != f"# rules {_rules_version()}":
        write_sentences(collect_sentences(cache_dir), path)
    return read_sentences(path)
