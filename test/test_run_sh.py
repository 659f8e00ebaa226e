"""The main job, ``egs/tiny/ASR/run.sh``, end to end at ``ci`` size.

It runs on a copy of the prepared ci corpus (the ``tiny_ci_dir`` fixture), trains one short
epoch, and checks that every stage left its artifacts and that the summary is well-formed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, make_tiny_workdir, tiny_env

EXPECTED_METHODS = (
    "greedy_search",
    "modified_beam_search",
    "fast_beam_search",
    "streaming_greedy_search",
    "sherpa_onnx_greedy_search",
    "sherpa_onnx_int8_greedy_search",
)
STAGES = ("prepare", "train", "decode", "streaming_decode", "export", "sherpa_onnx")


def run_main_job(work: Path) -> subprocess.CompletedProcess:
    """run.sh at ci size, one epoch, into ``work/exp``."""
    return subprocess.run(
        ["./run.sh", "--size", "ci", "--nj", "2", "--num-epochs", "1", "--exp-dir", "exp"],
        cwd=work,
        env=tiny_env(),
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def main_job(tiny_ci_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Runs run.sh once in a copy of the ci corpus; returns (work dir, exp dir, stdout)."""
    work = make_tiny_workdir(tmp_path_factory.mktemp("main_job"))
    (work / "run.sh").symlink_to(TINY_RECIPE / "run.sh")
    shutil.copytree(tiny_ci_dir / "data", work / "data", symlinks=True)
    shutil.copytree(tiny_ci_dir / "download", work / "download", symlinks=True)
    exp_dir = work / "exp"
    result = run_main_job(work)
    assert result.returncode == 0, (
        f"run.sh failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return work, exp_dir, result.stdout


def test_every_stage_leaves_its_artifacts(main_job: tuple) -> None:
    _, exp_dir, _ = main_job
    assert (exp_dir / "epoch-1.pt").is_file()
    assert list((exp_dir / "log").glob("log-train-*"))
    assert list((exp_dir / "tensorboard").iterdir())
    for method in ("greedy_search", "modified_beam_search", "fast_beam_search"):
        for kind in ("recogs", "errs", "wer-summary"):
            assert list((exp_dir / method).glob(f"{kind}-test-clean-*.txt")), (method, kind)
    assert list((exp_dir / "streaming" / "greedy_search").glob("wer-summary-test-clean-*.txt"))
    assert (exp_dir / "pretrained.pt").is_file()
    assert (exp_dir / "cpu_jit.pt").is_file()
    for role in ("encoder", "decoder", "joiner"):
        assert len(list(exp_dir.glob(f"{role}-*.onnx"))) == 2, role  # fp32 and int8
    for stage in STAGES:
        assert list(exp_dir.glob(f".stage-*-{stage}.done")), stage


def test_summary_is_well_formed(main_job: tuple) -> None:
    _, exp_dir, stdout = main_job
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert set(summary["wer"]) == {"dev", "test-clean", "test-other"}
    for test_set in ("dev", "test-clean", "test-other"):
        for method in EXPECTED_METHODS:
            wer = summary["wer"][test_set][method]
            assert isinstance(wer, float) and wer >= 0.0, (test_set, method)
    assert summary["rtf"]["sherpa_onnx_greedy_search"] > 0
    assert summary["rtf"]["streaming_greedy_search"] > 0
    assert summary["num_params"] > 100_000
    assert set(STAGES) <= set(summary["stage_seconds"])
    assert (exp_dir / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "sherpa_onnx_greedy_search" in stdout and "parameters:" in stdout


def test_second_run_reuses_finished_stages(main_job: tuple) -> None:
    work, exp_dir, _ = main_job
    before = (exp_dir / "epoch-1.pt").stat().st_mtime
    result = run_main_job(work)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in STAGES:
        assert f"({stage}): already done, skipping" in result.stdout
    assert (exp_dir / "epoch-1.pt").stat().st_mtime == before
