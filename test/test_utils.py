"""Tests for icefall.utils."""

import argparse
import copy
import io
import json
import logging
import pickle
import random
import re
from pathlib import Path

import kaldialign
import pytest
import torch

from icefall.tokens import read_tokens
from icefall.utils import (
    AttributeDict,
    DecodingResults,
    MetricsTracker,
    create_grad_scaler,
    fix_random_seed,
    get_autocast_dtype,
    is_jit_tracing,
    make_pad_mask,
    num_tokens,
    read_token_table,
    setup_logger,
    store_transcripts,
    str2bool,
    subsequent_chunk_mask,
    torch_autocast,
    write_error_stats,
)


@pytest.fixture
def restore_logging():
    """setup_logger replaces the root handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_attribute_dict() -> None:
    params = AttributeDict({"lr": 0.1})
    params.exp_dir = Path("exp")
    params.update({"num_epochs": 3})
    assert params.lr == params["lr"] == 0.1
    assert params["exp_dir"] == Path("exp") and params.num_epochs == 3
    del params.lr
    assert "lr" not in params
    with pytest.raises(AttributeError, match="lr"):
        _ = params.lr
    with pytest.raises(AttributeError):
        del params.lr
    assert json.loads(str(params)) == {"exp_dir": "exp", "num_epochs": 3}
    assert str(params).index("exp_dir") < str(params).index("num_epochs")
    copied = pickle.loads(pickle.dumps(copy.deepcopy(params)))
    assert isinstance(copied, AttributeDict) and copied.num_epochs == 3


@pytest.mark.parametrize("text", ["yes", "True", "t", "Y", "1"])
def test_str2bool_true(text: str) -> None:
    assert str2bool(text) is True


@pytest.mark.parametrize("text", ["no", "FALSE", "f", "n", "0"])
def test_str2bool_false(text: str) -> None:
    assert str2bool(text) is False


def test_str2bool_rejects_other_values() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="maybe"):
        str2bool("maybe")


def test_setup_logger_single_process(tmp_path: Path, monkeypatch, restore_logging) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    setup_logger(tmp_path / "log" / "log-train")
    logging.info("hello from the test")
    (log_file,) = (tmp_path / "log").iterdir()
    assert re.fullmatch(r"log-train-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d", log_file.name)
    assert "INFO [test_utils.py:" in log_file.read_text()
    assert "] hello from the test" in log_file.read_text()

    setup_logger(tmp_path / "quiet" / "log-train", log_level="warning", use_console=False)
    logging.info("not written")
    logging.warning("written")
    (quiet_file,) = (tmp_path / "quiet").iterdir()
    assert "not written" not in quiet_file.read_text()
    assert "WARNING" in quiet_file.read_text()
    assert len(logging.getLogger().handlers) == 1


def test_setup_logger_rank_from_env(tmp_path: Path, monkeypatch, restore_logging) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    setup_logger(tmp_path / "log-decode", use_console=False)
    logging.info("rank one")
    (log_file,) = tmp_path.iterdir()
    assert log_file.name.endswith("-1")
    assert "(1/2) rank one" in log_file.read_text()


def test_setup_logger_rejects_unknown_level(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="log_level"):
        setup_logger(tmp_path / "log", log_level="loud")


def make_tracker(**values: float) -> MetricsTracker:
    tracker = MetricsTracker()
    for key, value in values.items():
        tracker[key] = value
    return tracker


def test_metrics_tracker_arithmetic_and_normalisation() -> None:
    a = make_tracker(frames=100, utterances=4, loss=50.0, utt_duration=400)
    b = make_tracker(frames=300, utterances=4, loss=30.0, simple_loss=12.0)
    total = a + b
    assert total["frames"] == 400 and total["loss"] == 80.0 and total["simple_loss"] == 12.0
    assert total["missing"] == 0
    assert (total * 0.5)["loss"] == 40.0 and total["loss"] == 80.0

    normalised = dict(total.norm_items())
    assert "frames" not in normalised and "utterances" not in normalised
    assert normalised["loss"] == pytest.approx(80 / 400)
    assert normalised["simple_loss"] == pytest.approx(12 / 400)
    assert normalised["utt_duration"] == pytest.approx(400 / 8)

    text = str(total)
    assert "loss=0.2, " in text and "over 400.00 frames." in text
    assert "utt_duration=50, over 8.00 utterances." in text
    assert str(make_tracker(loss=3.0)) == "loss=3, over 0.00 frames."
    for copied in (copy.deepcopy(total), pickle.loads(pickle.dumps(total))):
        assert isinstance(copied, MetricsTracker) and copied == total


def test_metrics_tracker_write_summary() -> None:
    class RecordingWriter:
        def __init__(self) -> None:
            self.calls = []

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.calls.append((tag, value, step))

    writer = RecordingWriter()
    make_tracker(frames=10, loss=5.0, utterances=2, utt_pad_proportion=0.5).write_summary(
        writer, "train/current_", 7
    )
    assert sorted(writer.calls) == [
        ("train/current_loss", 0.5, 7),
        ("train/current_utt_pad_proportion", 0.25, 7),
    ]


def test_make_pad_mask() -> None:
    lengths = torch.tensor([1, 3, 2])
    expected = torch.tensor([[j >= n for j in range(3)] for n in (1, 3, 2)])
    assert torch.equal(make_pad_mask(lengths), expected)
    assert torch.equal(make_pad_mask(lengths, pad_left=True), expected.flip(1))
    wide = make_pad_mask(lengths, max_len=5)
    assert wide.shape == (3, 5) and wide[:, 3:].all()
    with pytest.raises(ValueError, match="1-D"):
        make_pad_mask(torch.ones(2, 2, dtype=torch.long))


def reference_chunk_mask(size: int, chunk: int, left: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    for i in range(size):
        start = 0 if left < 0 else max((i // chunk - left) * chunk, 0)
        end = min((i // chunk + 1) * chunk, size)
        mask[i, start:end] = True
    return mask


@pytest.mark.parametrize(("size", "chunk", "left"), [(7, 2, -1), (10, 3, 1), (8, 4, 0), (5, 8, 2)])
def test_subsequent_chunk_mask(size: int, chunk: int, left: int) -> None:
    mask = subsequent_chunk_mask(size, chunk, left)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, reference_chunk_mask(size, chunk, left))


def test_subsequent_chunk_mask_rejects_bad_chunk() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        subsequent_chunk_mask(4, 0)


def test_store_transcripts(tmp_path: Path) -> None:
    path = tmp_path / "recogs.txt"
    store_transcripts(path, [("cut-1", ["HELLO", "WORLD"], ["HELLO", "WORD"])])
    assert path.read_text().splitlines() == [
        "cut-1:\tref=['HELLO', 'WORLD']",
        "cut-1:\thyp=['HELLO', 'WORD']",
    ]
    store_transcripts(path, [("c", ["AB", "C"], ["A"])], char_level=True)
    assert path.read_text().splitlines() == ["c:\tref=['A', 'B', 'C']", "c:\thyp=['A']"]


RESULTS = [
    ("utt-1", "THE CAT SAT ON THE MAT".split(), "THE BAT SAT ON MAT NOW".split()),
    ("utt-2", "A B C".split(), "A X Y Z C".split()),
    ("utt-3", "HELLO".split(), "HELLO".split()),
]


def test_write_error_stats_matches_edit_distance(caplog) -> None:
    f = io.StringIO()
    with caplog.at_level(logging.INFO):
        wer = write_error_stats(f, "test-clean", RESULTS, compute_CER=True)

    word_errors = sum(kaldialign.edit_distance(r, h)["total"] for _, r, h in RESULTS)
    num_words = sum(len(r) for _, r, _ in RESULTS)
    assert wer == round(100 * word_errors / num_words, 2)
    char_errors = sum(
        kaldialign.edit_distance(list("".join(r)), list("".join(h)))["total"] for _, r, h in RESULTS
    )
    cer = round(100 * char_errors / sum(len("".join(r)) for _, r, _ in RESULTS), 2)

    text = f.getvalue()
    assert text.startswith(f"%WER = {wer:.2f}\n%CER = {cer:.2f}\n")
    assert f"over {num_words} reference words" in text
    for section in ("PER-UTT DETAILS:", "SUBSTITUTIONS:", "DELETIONS:", "INSERTIONS:"):
        assert section in text
    assert "PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp" in text
    assert "utt-1:\tTHE (CAT->BAT) SAT ON (THE->*) MAT (*->NOW)" in text
    assert "utt-2:\tA (B->X Y Z) C" in text
    assert "utt-3:\tHELLO" in text
    assert "1   CAT -> BAT" in text
    assert f"[test-clean] %WER {wer:.2f}% [{word_errors} / {num_words}" in caplog.text


def test_write_error_stats_accepts_strings_and_empty_refs(caplog) -> None:
    f = io.StringIO()
    assert write_error_stats(f, "s", [("u", "A B", "A C")], enable_log=False) == 50.0
    assert write_error_stats(io.StringIO(), "empty", [("u", [], [])]) == 0.0
    assert "no words" in caplog.text


def test_decoding_results() -> None:
    results = DecodingResults(timestamps=[[0, 3]], hyps=[[5, 9]])
    assert results.scores is None and results.hyps[0] == [5, 9]


def test_autocast_and_grad_scaler_on_cpu() -> None:
    linear = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with torch_autocast("cpu", dtype=get_autocast_dtype(use_bf16=True)):
        assert linear(x).dtype == torch.bfloat16
    with torch_autocast("cpu", enabled=False):
        assert linear(x).dtype == torch.float32
    assert get_autocast_dtype(use_fp16=True) == torch.float16
    assert get_autocast_dtype() is None
    with pytest.raises(ValueError, match="both"):
        get_autocast_dtype(use_fp16=True, use_bf16=True)

    scaler = create_grad_scaler("cpu", init_scale=8.0)
    assert scaler.scale(torch.tensor(1.0)).item() == 8.0


def test_fix_random_seed_repeats() -> None:
    fix_random_seed(3)
    first = (random.random(), torch.rand(3))
    fix_random_seed(3)
    second = (random.random(), torch.rand(3))
    assert first[0] == second[0] and torch.equal(first[1], second[1])


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*:DeprecationWarning")
def test_is_jit_tracing() -> None:
    seen = []

    def f(x: torch.Tensor) -> torch.Tensor:
        seen.append(is_jit_tracing())
        return x * 2

    f(torch.ones(1))
    torch.jit.trace(f, torch.ones(1), check_trace=False)
    assert seen == [False, True]


def test_token_table(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("<blk> 0\n<sos/eos> 1\n<unk> 2\n▁A 3\n#0 4\n\n")
    table = read_token_table(path)
    assert table["▁A"] == 3
    assert num_tokens(table) == 3
    path.write_text("<blk> zero\n")
    with pytest.raises(ValueError, match="tokens.txt:1"):
        read_token_table(path)


def test_lone_id_is_a_space_for_sherpa_only(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("<blk> 0\n 1\n")
    assert read_tokens(path) == [("<blk>", 0), (" ", 1)]
    with pytest.raises(ValueError, match="tokens.txt:2: expected 'symbol id'"):
        read_token_table(path)
