"""Which cut files form the train/valid/test sets of each corpus.

A corpus is one :class:`Corpus` entry in :data:`CORPORA`; the data module, the recipes and the
docs read it from here, so adding a corpus (after writing its ``prepare.sh``) is one entry.
Cut files are ``{manifest_dir}/{prefix}_cuts_{part}.jsonl.gz``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Corpus:
    """The cut files of one corpus.

    Attributes:
      name: corpus name, also its folder ``egs/<name>/ASR``.
      train: parts forming the training set by default.
      valid: parts forming the validation set.
      test: parts decoded by ``decode.py``, in this order.
      lang_dir: default BPE lang dir (``bpe.model``, ``tokens.txt``).
      full_train: training parts with ``--full-libri true`` (empty: same as ``train``).
      mini_train: training parts with ``--mini-libri true`` (empty: same as ``train``).
      mini_valid: validation parts with ``--mini-libri true`` (empty: same as ``valid``).
      noise_cuts: noise cut file name used by ``--enable-musan``.
    """

    name: str
    train: Tuple[str, ...]
    valid: Tuple[str, ...]
    test: Tuple[str, ...]
    lang_dir: str
    full_train: Tuple[str, ...] = ()
    mini_train: Tuple[str, ...] = ()
    mini_valid: Tuple[str, ...] = ()
    noise_cuts: str = "musan_cuts.jsonl.gz"

    def cuts_filename(self, part: str) -> str:
        """``{name}_cuts_{part}.jsonl.gz``."""
        return f"{self.name}_cuts_{part}.jsonl.gz"

    def train_parts(self, full_libri: bool = True, mini_libri: bool = False) -> Tuple[str, ...]:
        """The training parts selected by icefall's ``--full-libri``/``--mini-libri`` flags."""
        if mini_libri and self.mini_train:
            return self.mini_train
        if full_libri and self.full_train:
            return self.full_train
        return self.train

    def valid_parts(self, mini_libri: bool = False) -> Tuple[str, ...]:
        """The validation parts (the mini set with ``--mini-libri``)."""
        if mini_libri and self.mini_valid:
            return self.mini_valid
        return self.valid


LIBRISPEECH = Corpus(
    name="librispeech",
    train=("train-clean-100",),
    full_train=("train-all-shuf",),
    mini_train=("train-clean-5",),
    valid=("dev-clean", "dev-other"),
    mini_valid=("dev-clean-2",),
    test=("test-clean", "test-other"),
    lang_dir="data/lang_bpe_500",
)

TINY = Corpus(
    name="tiny",
    train=("train",),
    valid=("dev",),
    # dev (training voices, new sentences) is decoded too: the main job reports it beside the
    # unseen-voice test sets.
    test=("dev", "test-clean", "test-other"),
    lang_dir="data/lang_bpe_256",
)

CORPORA: Dict[str, Corpus] = {corpus.name: corpus for corpus in (LIBRISPEECH, TINY)}

DEFAULT_CORPUS = "librispeech"


def get_corpus(name: str) -> Corpus:
    """The registered corpus called ``name`` (clear error listing the known ones)."""
    try:
        return CORPORA[name]
    except KeyError:
        known = ", ".join(sorted(CORPORA))
        raise ValueError(f"unknown corpus {name!r}; known corpora: {known}") from None


def detect_corpus(cwd: Optional[Path] = None) -> str:
    """The corpus of the recipe folder we run in: ``<name>`` when the current directory is (or
    is inside) ``egs/<name>/ASR`` and ``<name>`` is registered, else ``librispeech``."""
    parts = Path(cwd if cwd is not None else _logical_cwd()).parts
    for i in range(len(parts) - 2):
        if parts[i] == "egs" and parts[i + 2] == "ASR" and parts[i + 1] in CORPORA:
            return parts[i + 1]
    return DEFAULT_CORPUS


def _logical_cwd() -> str:
    """The current directory as the shell names it (``$PWD`` keeps symlinked folder names)."""
    physical = os.getcwd()
    logical = os.environ.get("PWD")
    if logical and os.path.isdir(logical) and os.path.samefile(logical, physical):
        return logical
    return physical
