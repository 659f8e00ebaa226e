"""Shared helpers that icefall users know by name.

Logging (``setup_logger``), configuration containers (``AttributeDict``, ``str2bool``), training
metrics (``MetricsTracker``), attention masks (``make_pad_mask``, ``subsequent_chunk_mask``),
transcripts and error statistics (``store_transcripts``, ``write_error_stats``), decoding
results (``DecodingResults``), mixed-precision shims (``create_grad_scaler``, ``torch_autocast``)
and seeding (``fix_random_seed``).

This module never imports k2, kaldifeat or torchaudio.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, TextIO, Union

import kaldialign
import numpy as np
import torch
import torch.distributed as dist

from icefall.tokens import read_token_table  # noqa: F401 - re-exported (icefall's place for it)

Pathlike = Union[str, Path]

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The symbol kaldialign uses to mark a missing word in an alignment.
ERR_SYMBOL = "*"


class AttributeDict(dict):
    """A dict whose items are also attributes: ``params.lr == params["lr"]``.

    ``str(params)`` is a sorted, indented JSON dump; values JSON cannot encode (paths, devices,
    dtypes, ...) are written with ``str``.
    """

    def __getattr__(self, key: str) -> Any:
        if key in self:
            return self[key]
        raise AttributeError(f"No such attribute '{key}'")

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        if key in self:
            del self[key]
            return
        raise AttributeError(f"No such attribute '{key}'")

    def __str__(self, indent: int = 2) -> str:
        return json.dumps(self, indent=indent, sort_keys=True, default=str)


def str2bool(v: Union[str, bool]) -> bool:
    """Parse a boolean command-line value (for ``argparse`` ``type=str2bool``).

    Accepts yes/true/t/y/1 and no/false/f/n/0 (case-insensitive); anything else raises
    ``argparse.ArgumentTypeError``.
    """
    if isinstance(v, bool):
        return v
    value = v.strip().lower()
    if value in ("yes", "true", "t", "y", "1"):
        return True
    if value in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"Boolean value expected, got '{v}'")


def _rank_and_world_size() -> tuple[int, int]:
    """(rank, world_size) from an initialised process group, else from RANK/WORLD_SIZE."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup_logger(
    log_filename: Pathlike,
    log_level: str = "info",
    use_console: bool = True,
) -> None:
    """Log to ``{log_filename}-{YYYY-mm-dd-HH-MM-SS}`` (plus ``-{rank}`` under DDP) and the console.

    Under DDP every line also shows ``(rank/world_size)``. Replaces any earlier logging setup.

    Args:
      log_filename: prefix of the log file, e.g. ``exp_dir/log/log-train``.
      log_level: one of debug, info, warning, error, critical.
      use_console: also print to stderr.
    """
    if log_level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {sorted(LOG_LEVELS)}, got '{log_level}'")
    level = LOG_LEVELS[log_level]
    date_time = datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    rank, world_size = _rank_and_world_size()
    if world_size > 1:
        formatter = (
            f"%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] ({rank}/{world_size}) %(message)s"
        )
        filename = f"{log_filename}-{date_time}-{rank}"
    else:
        formatter = "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"
        filename = f"{log_filename}-{date_time}"

    Path(filename).parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=filename,
        format=formatter,
        level=level,
        filemode="w",
        force=True,
    )
    if use_console:
        console = logging.StreamHandler()
        console.setLevel(level)
        console.setFormatter(logging.Formatter(formatter))
        logging.getLogger("").addHandler(console)


def fix_random_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class MetricsTracker(collections.defaultdict):
    """Sums of training statistics (losses, ``frames``, ``utterances``, ...); missing keys are 0.

    ``norm_items()`` divides every sum by ``frames``, or by ``utterances`` for keys containing
    ``utt_``. ``a + b`` adds key-wise, ``a * alpha`` scales every value (used for the
    exponentially decayed running total ``tot = tot * (1 - 1/reset_interval) + info``).
    """

    def __init__(self) -> None:
        super().__init__(int)

    def __reduce__(self) -> tuple:
        # defaultdict's own __reduce__ would pass default_factory to __init__.
        return (MetricsTracker, (), None, None, iter(self.items()))

    def __add__(self, other: MetricsTracker) -> MetricsTracker:
        ans = MetricsTracker()
        for key, value in self.items():
            ans[key] = value
        for key, value in other.items():
            ans[key] = ans[key] + value
        return ans

    def __mul__(self, alpha: float) -> MetricsTracker:
        ans = MetricsTracker()
        for key, value in self.items():
            ans[key] = value * alpha
        return ans

    def norm_items(self) -> list[tuple[str, float]]:
        """Per-frame (or per-utterance for ``utt_*`` keys) values, e.g. ``[("loss", 0.12)]``."""
        num_frames = self["frames"] if "frames" in self and self["frames"] != 0 else 1
        num_utterances = (
            self["utterances"] if "utterances" in self and self["utterances"] != 0 else 1
        )
        ans = []
        for key, value in self.items():
            if key in ("frames", "utterances"):
                continue
            divisor = num_utterances if "utt_" in key else num_frames
            ans.append((key, float(value) / divisor))
        return ans

    def __str__(self) -> str:
        per_frame = ""
        per_utterance = ""
        for key, value in self.norm_items():
            if "utt_" in key:
                per_utterance += f"{key}={value:.4g}, "
            else:
                per_frame += f"{key}={value:.4g}, "
        ans = per_frame + f"over {float(self['frames']):.2f} frames."
        if per_utterance:
            ans += " " + per_utterance + f"over {float(self['utterances']):.2f} utterances."
        return ans

    def reduce(self, device: Union[str, torch.device]) -> None:
        """Sum every value over all DDP processes (``all_reduce`` SUM), in place.

        All processes must hold the same keys. ``device`` must suit the backend (CUDA for NCCL).
        """
        keys = sorted(self.keys())
        values = torch.tensor([float(self[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        for key, value in zip(keys, values.cpu().tolist()):
            self[key] = value

    def write_summary(self, tb_writer: Any, prefix: str, batch_idx: int) -> None:
        """Add every normalised value to TensorBoard as ``{prefix}{key}`` at step ``batch_idx``.

        Args:
          tb_writer: a ``torch.utils.tensorboard.SummaryWriter`` (anything with ``add_scalar``).
          prefix: e.g. ``"train/current_"`` or ``"train/valid_"``.
          batch_idx: the x-axis value (global batch index).
        """
        for key, value in self.norm_items():
            tb_writer.add_scalar(prefix + key, value, batch_idx)


def make_pad_mask(lengths: torch.Tensor, max_len: int = 0, pad_left: bool = False) -> torch.Tensor:
    """Boolean padding mask, True at padded positions.

    Args:
      lengths: (N,) integer lengths.
      max_len: minimum width of the mask; the width is ``max(max_len, lengths.max())``.
      pad_left: padding sits at the start of each row instead of the end.
    Returns:
      (N, width) bool tensor; ``mask[i, j]`` is True when position j of sequence i is padding.
    """
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
    width = max(max_len, int(lengths.max())) if lengths.numel() > 0 else max_len
    positions = torch.arange(width, device=lengths.device).unsqueeze(0)
    if pad_left:
        return positions < (width - lengths).unsqueeze(-1)
    return positions >= lengths.unsqueeze(-1)


def subsequent_chunk_mask(
    size: int,
    chunk_size: int,
    num_left_chunks: int = -1,
    device: Union[str, torch.device] = "cpu",
) -> torch.Tensor:
    """Chunk-wise causal attention mask, True where attention is allowed.

    Frame i belongs to chunk ``i // chunk_size``; it sees every frame up to the end of its own
    chunk and, if ``num_left_chunks >= 0``, only that many chunks to the left.

    Args:
      size: number of frames.
      chunk_size: frames per chunk (> 0).
      num_left_chunks: left chunks visible; negative means all.
      device: device of the result.
    Returns:
      (size, size) bool tensor.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    positions = torch.arange(size, device=device)
    chunk_index = positions // chunk_size
    end = (chunk_index + 1) * chunk_size
    if num_left_chunks < 0:
        start = torch.zeros_like(positions)
    else:
        start = ((chunk_index - num_left_chunks) * chunk_size).clamp(min=0)
    columns = positions.unsqueeze(0)
    return (columns >= start.unsqueeze(1)) & (columns < end.unsqueeze(1))


def _as_words(text: Union[str, list[str]]) -> list[str]:
    return text.split() if isinstance(text, str) else list(text)


def store_transcripts(
    filename: Pathlike,
    texts: Iterable[tuple[str, Union[str, list[str]], Union[str, list[str]]]],
    char_level: bool = False,
) -> None:
    """Write reference and hypothesis of every utterance, two lines each::

        {cut_id}:\\tref=['HELLO', 'WORLD']
        {cut_id}:\\thyp=['HELLO', 'WORD']

    Args:
      filename: output text file.
      texts: (cut_id, ref, hyp) tuples; ref/hyp are word lists (or strings).
      char_level: write the characters of the joined words instead of the words.
    """
    with open(filename, "w", encoding="utf8") as f:
        for cut_id, ref, hyp in texts:
            if char_level:
                ref = list("".join(ref))
                hyp = list("".join(hyp))
            print(f"{cut_id}:\tref={ref}", file=f)
            print(f"{cut_id}:\thyp={hyp}", file=f)


@dataclass
class _ErrorCounts:
    """Error statistics accumulated over many aligned utterances."""

    subs: dict[tuple[str, str], int]
    ins: dict[str, int]
    dels: dict[str, int]
    # per word: [correct, ref side of a substitution, hyp side of a substitution, ins, del]
    words: dict[str, list[int]]
    num_correct: int = 0
    ref_len: int = 0

    @property
    def num_errors(self) -> int:
        return sum(self.subs.values()) + sum(self.ins.values()) + sum(self.dels.values())

    def rate(self) -> float:
        """Error rate in percent, rounded to 2 decimals (as written to the file)."""
        return round(100.0 * self.num_errors / max(self.ref_len, 1), 2)


def _count_errors(alignments: list[list[tuple[str, str]]], ref_len: int) -> _ErrorCounts:
    counts = _ErrorCounts(
        subs=defaultdict(int),
        ins=defaultdict(int),
        dels=defaultdict(int),
        words=defaultdict(lambda: [0, 0, 0, 0, 0]),
        ref_len=ref_len,
    )
    for ali in alignments:
        for ref_word, hyp_word in ali:
            if ref_word == ERR_SYMBOL:
                counts.ins[hyp_word] += 1
                counts.words[hyp_word][3] += 1
            elif hyp_word == ERR_SYMBOL:
                counts.dels[ref_word] += 1
                counts.words[ref_word][4] += 1
            elif ref_word != hyp_word:
                counts.subs[(ref_word, hyp_word)] += 1
                counts.words[ref_word][1] += 1
                counts.words[hyp_word][2] += 1
            else:
                counts.words[ref_word][0] += 1
                counts.num_correct += 1
    return counts


def _merge_successive_errors(ali: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Join runs of consecutive errors into one ``(ref words -> hyp words)`` pair."""
    merged: list[tuple[list[str], list[str]]] = []
    previous_was_error = False
    for ref_word, hyp_word in ali:
        is_error = ref_word != hyp_word
        if is_error and previous_was_error:
            refs, hyps = merged[-1]
        else:
            refs, hyps = [], []
            merged.append((refs, hyps))
        if ref_word != ERR_SYMBOL:
            refs.append(ref_word)
        if hyp_word != ERR_SYMBOL:
            hyps.append(hyp_word)
        previous_was_error = is_error
    return [
        (" ".join(refs) if refs else ERR_SYMBOL, " ".join(hyps) if hyps else ERR_SYMBOL)
        for refs, hyps in merged
    ]


def _write_counts_tables(f: TextIO, counts: _ErrorCounts) -> None:
    print("", file=f)
    print("SUBSTITUTIONS: count ref -> hyp", file=f)
    for count, (ref, hyp) in sorted(((v, k) for k, v in counts.subs.items()), reverse=True):
        print(f"{count}   {ref} -> {hyp}", file=f)

    print("", file=f)
    print("DELETIONS: count ref", file=f)
    for count, ref in sorted(((v, k) for k, v in counts.dels.items()), reverse=True):
        print(f"{count}   {ref}", file=f)

    print("", file=f)
    print("INSERTIONS: count hyp", file=f)
    for count, hyp in sorted(((v, k) for k, v in counts.ins.items()), reverse=True):
        print(f"{count}   {hyp}", file=f)

    print("", file=f)
    print("PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp", file=f)
    for _, word, (corr, ref_sub, hyp_sub, ins, dels) in sorted(
        ((sum(v[1:]), k, v) for k, v in counts.words.items()), reverse=True
    ):
        tot_errs = ref_sub + hyp_sub + ins + dels
        print(f"{word}   {corr} {tot_errs} {corr + ref_sub + dels} {corr + hyp_sub + ins}", file=f)


def write_error_stats(
    f: TextIO,
    test_set_name: str,
    results: Iterable[tuple[str, Union[str, list[str]], Union[str, list[str]]]],
    enable_log: bool = True,
    compute_CER: bool = False,
    sclite_mode: bool = False,
) -> float:
    """Align hypotheses to references (kaldialign) and write error statistics to ``f``.

    Written sections: ``%WER = x.xx`` (and ``%CER = x.xx`` when ``compute_CER``), the error
    counts, ``PER-UTT DETAILS`` (``(ref->hyp)`` notation, successive errors merged),
    ``SUBSTITUTIONS``, ``DELETIONS``, ``INSERTIONS`` and ``PER-WORD STATS`` (over words).

    Args:
      f: an open text file.
      test_set_name: name used in the log line, e.g. ``test-clean``.
      results: (cut_id, ref, hyp) tuples; ref/hyp are word lists (strings are split on spaces).
      enable_log: also log ``[name] %WER ...`` (and ``%CER``).
      compute_CER: also compute the character error rate (characters of the words joined
        without spaces) and write it after the WER.
      sclite_mode: kaldialign's sclite-compatible alignment costs.
    Returns:
      The WER in percent, rounded to two decimals.
    """
    utterances = [(cut_id, _as_words(ref), _as_words(hyp)) for cut_id, ref, hyp in results]
    alignments = [
        kaldialign.align(ref, hyp, ERR_SYMBOL, sclite_mode=sclite_mode)
        for _, ref, hyp in utterances
    ]
    ref_len = sum(len(ref) for _, ref, _ in utterances)
    if ref_len == 0:
        logging.warning(f"[{test_set_name}] the references contain no words; WER is not defined")
    counts = _count_errors(alignments, ref_len)
    wer = counts.rate()
    num_sub = sum(counts.subs.values())
    num_ins = sum(counts.ins.values())
    num_del = sum(counts.dels.values())
    if enable_log:
        logging.info(
            f"[{test_set_name}] %WER {wer:.2f}% [{counts.num_errors} / {ref_len}, "
            f"{num_ins} ins, {num_del} del, {num_sub} sub ]"
        )
    print(f"%WER = {wer:.2f}", file=f)

    if compute_CER:
        char_alignments = [
            kaldialign.align(list("".join(ref)), list("".join(hyp)), ERR_SYMBOL, sclite_mode)
            for _, ref, hyp in utterances
        ]
        num_chars = sum(len("".join(ref)) for _, ref, _ in utterances)
        char_counts = _count_errors(char_alignments, num_chars)
        cer = char_counts.rate()
        if enable_log:
            logging.info(
                f"[{test_set_name}] %CER {cer:.2f}% [{char_counts.num_errors} / {num_chars}]"
            )
        print(f"%CER = {cer:.2f}", file=f)

    print(
        f"Errors: {num_ins} insertions, {num_del} deletions, {num_sub} substitutions, "
        f"over {ref_len} reference words ({counts.num_correct} correct)",
        file=f,
    )
    print(
        "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, "
        "DELETIONS:, INSERTIONS:, PER-WORD STATS:",
        file=f,
    )
    print("", file=f)
    print("PER-UTT DETAILS: corr or (ref->hyp)  ", file=f)
    for (cut_id, _, _), ali in zip(utterances, alignments):
        pieces = (
            ref if ref == hyp else f"({ref}->{hyp})" for ref, hyp in _merge_successive_errors(ali)
        )
        print(f"{cut_id}:\t" + " ".join(pieces), file=f)
    _write_counts_tables(f, counts)
    return wer


@dataclass
class DecodingResults:
    """Output of a batched search.

    Attributes:
      timestamps: per utterance, the output frame index of every emitted token.
      hyps: per utterance, the emitted token ids.
      scores: per utterance, the log-probability of every emitted token (optional).
    """

    timestamps: list[list[int]]
    hyps: list[list[int]]
    scores: Optional[list[list[float]]] = None


def create_grad_scaler(device: str = "cuda", **kwargs: Any) -> torch.amp.GradScaler:
    """A ``torch.amp.GradScaler`` for ``device``; kwargs go to it (``init_scale``, ``enabled``).

    On a machine without CUDA a "cuda" scaler disables itself (a warning from torch).
    """
    return torch.amp.GradScaler(device, **kwargs)


def torch_autocast(device_type: str = "cuda", **kwargs: Any) -> torch.amp.autocast:
    """``torch.amp.autocast`` context; pass ``dtype=torch.bfloat16`` for bf16, ``enabled=...``."""
    return torch.amp.autocast(device_type=device_type, **kwargs)


def get_autocast_dtype(use_fp16: bool = False, use_bf16: bool = False) -> Optional[torch.dtype]:
    """The autocast dtype chosen by ``--use-fp16`` / ``--use-bf16`` (None: full precision)."""
    if use_fp16 and use_bf16:
        raise ValueError("--use-fp16 and --use-bf16 cannot both be true")
    if use_bf16:
        return torch.bfloat16
    if use_fp16:
        return torch.float16
    return None


def is_jit_tracing() -> bool:
    """True while ``torch.jit.trace`` runs (and not while scripting)."""
    if torch.jit.is_scripting():
        return False
    return torch.jit.is_tracing()


def num_tokens(token_table: dict[str, int]) -> int:
    """Number of real tokens: ids other than 0 (blank) and disambiguation symbols ``#k``."""
    return len(
        {
            token_id
            for symbol, token_id in token_table.items()
            if token_id != 0 and not (symbol.startswith("#") and symbol[1:].isdigit())
        }
    )
