"""BPE (sentencepiece unigram) lang dirs: ``bpe.model`` and ``tokens.txt``.

Token ids follow icefall: ``<blk>`` = 0, ``<sos/eos>`` = 1, ``<unk>`` = 2, then the learnt pieces
(word-initial pieces start with U+2581). ``tokens.txt`` has one ``"piece id"`` line per token.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm

BLANK = "<blk>"
SOS_EOS = "<sos/eos>"
UNK = "<unk>"


class BpeTrainingError(RuntimeError):
    """sentencepiece could not train a model with the requested options."""


def train_bpe_model(transcript: Path, lang_dir: Path, vocab_size: int) -> Path:
    """Train ``lang_dir/bpe.model`` on a transcript (one sentence per line).

    Idempotent: an existing ``bpe.model`` is kept. ``tokens.txt`` is (re)written when missing.

    Args:
      transcript: text file, one normalised sentence per line.
      lang_dir: output folder (created).
      vocab_size: number of tokens including ``<blk>``, ``<sos/eos>`` and ``<unk>``.
    Returns:
      The path of ``bpe.model``.
    Raises:
      BpeTrainingError: when the transcript is too small for ``vocab_size`` (or empty).
    """
    lang_dir = Path(lang_dir)
    lang_dir.mkdir(parents=True, exist_ok=True)
    model_path = lang_dir / "bpe.model"
    if model_path.is_file():
        logging.info(f"{model_path} exists; not retraining")
    else:
        _train(Path(transcript), model_path, vocab_size)
    tokens_path = lang_dir / "tokens.txt"
    if not tokens_path.is_file():
        write_tokens(model_path, tokens_path)
    return model_path


def _train(transcript: Path, model_path: Path, vocab_size: int) -> None:
    if not transcript.is_file() or transcript.stat().st_size == 0:
        raise BpeTrainingError(f"transcript {transcript} is missing or empty")
    with tempfile.TemporaryDirectory(dir=model_path.parent) as tmp:
        prefix = Path(tmp) / f"unigram_{vocab_size}"
        try:
            spm.SentencePieceTrainer.train(
                input=str(transcript),
                model_prefix=str(prefix),
                model_type="unigram",
                vocab_size=vocab_size,
                character_coverage=1.0,
                input_sentence_size=100_000_000,
                user_defined_symbols=[BLANK, SOS_EOS],
                unk_id=2,
                bos_id=-1,
                eos_id=-1,
                minloglevel=2,
            )
        except RuntimeError as error:
            raise BpeTrainingError(
                f"sentencepiece failed on {transcript} with vocab size {vocab_size}: {error} "
                f"({_vocab_size_hint(str(error))})"
            ) from error
        shutil.move(f"{prefix}.model", model_path)
    logging.info(f"trained {model_path} (vocab size {vocab_size})")


def _vocab_size_hint(message: str) -> str:
    if "required_chars" in message:
        return "every character needs a token: use a larger --vocab-size"
    if "too high" in message:
        return "the transcript is too small for this vocabulary: use a smaller --vocab-size"
    return "check the transcript and --vocab-size"


def write_tokens(model_path: Path, tokens_path: Path) -> None:
    """Write ``tokens.txt`` ("piece id" per line, ids 0..V-1) for a sentencepiece model."""
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    expected = {0: BLANK, 1: SOS_EOS, 2: UNK}
    for token_id, piece in expected.items():
        if sp.id_to_piece(token_id) != piece:
            raise BpeTrainingError(
                f"{model_path}: id {token_id} is {sp.id_to_piece(token_id)!r}, expected {piece!r}"
            )
    lines = [f"{sp.id_to_piece(i)} {i}\n" for i in range(sp.get_piece_size())]
    tokens_path.write_text("".join(lines), encoding="utf-8")


def load_bpe_model(path: Path) -> spm.SentencePieceProcessor:
    """Load a sentencepiece model with a clear error when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BPE model {path} not found; run prepare.sh stage 5 first")
    return spm.SentencePieceProcessor(model_file=str(path))
