"""Tests for icefall.summary: collecting WER files, timings and parameter counts of a run."""

import json
import os
from pathlib import Path

import pytest
import torch

from icefall.summary import (
    collect_wers,
    count_parameters,
    format_table,
    read_wer_summary,
    record_time,
    summarize,
)


def write_wer(path: Path, wer: float, mtime: float = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"settings\tWER\ngreedy_search\t{wer}\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_read_wer_summary_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "wer-summary-dev-x.txt"
    bad.write_text("%WER = 3.1\n")
    with pytest.raises(ValueError, match="not a wer-summary"):
        read_wer_summary(bad)


def test_collect_wers_names_methods_by_directory(tmp_path: Path) -> None:
    write_wer(tmp_path / "greedy_search/wer-summary-test-clean-greedy_search-epoch-3.txt", 4.5)
    write_wer(tmp_path / "greedy_search/wer-summary-dev-greedy_search-epoch-3.txt", 3.25)
    write_wer(tmp_path / "streaming/greedy_search/wer-summary-test-clean-x.txt", 4.75)
    write_wer(tmp_path / "sherpa_onnx/greedy_search/wer-summary-test-clean-x.txt", 4.8)
    # An older result for the same method and test set is ignored.
    write_wer(tmp_path / "modified_beam_search/wer-summary-test-clean-a.txt", 9.0, mtime=1000)
    write_wer(tmp_path / "modified_beam_search/wer-summary-test-clean-b.txt", 4.0, mtime=2000)

    wer = collect_wers(tmp_path, ["dev", "test-clean", "test-other"])

    assert wer == {
        "dev": {"greedy_search": 3.25},
        "test-clean": {
            "greedy_search": 4.5,
            "modified_beam_search": 4.0,
            "sherpa_onnx_greedy_search": 4.8,
            "streaming_greedy_search": 4.75,
        },
        "test-other": {},
    }


def test_record_time_merges_stages(tmp_path: Path) -> None:
    timings = tmp_path / "stage_seconds.json"
    record_time(timings, "prepare", 12)
    record_time(timings, "train", 30)
    record_time(timings, "prepare", 14)
    assert json.loads(timings.read_text()) == {"prepare": 14, "train": 30}


def test_count_parameters_skips_integer_buffers(tmp_path: Path) -> None:
    state_dict = {"w": torch.zeros(3, 4), "b": torch.zeros(4), "count": torch.tensor(7)}
    torch.save({"model": state_dict}, tmp_path / "pretrained.pt")
    assert count_parameters(tmp_path / "pretrained.pt") == 16
    assert count_parameters(tmp_path / "missing.pt") is None


def test_summarize_writes_json_and_png(tmp_path: Path) -> None:
    write_wer(tmp_path / "greedy_search/wer-summary-test-clean-greedy_search.txt", 5.5)
    deploy = {
        "test_sets": {
            "tiny_cuts_test-clean": {
                "sherpa_onnx": {"wer": 5.25, "rtf": 0.02},
                "sherpa_onnx_int8": {"wer": 6.0, "rtf": 0.015},
            }
        },
        "rtf_sherpa_onnx": 0.02,
        "rtf_pytorch": 0.05,
    }
    (tmp_path / "deploy.json").write_text(json.dumps(deploy))
    record_time(tmp_path / "stage_seconds.json", "train", 100)
    torch.save({"model": {"w": torch.zeros(10)}}, tmp_path / "pretrained.pt")

    summary = summarize(tmp_path, ["test-clean"])

    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["wer"]["test-clean"]["greedy_search"] == 5.5
    assert summary["wer"]["test-clean"]["sherpa_onnx_greedy_search"] == 5.25
    assert summary["wer"]["test-clean"]["sherpa_onnx_int8_greedy_search"] == 6.0
    assert summary["rtf"] == {"sherpa_onnx_greedy_search": 0.02, "streaming_greedy_search": 0.05}
    assert summary["num_params"] == 10
    assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"
    table = format_table(summary)
    assert "greedy_search" in table and "5.50" in table and "parameters: 10" in table
