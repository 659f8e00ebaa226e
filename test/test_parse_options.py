"""Tests for icefall/shared/parse_options.sh (Kaldi option semantics), run through bash."""

import subprocess
from pathlib import Path

import pytest

PARSE_OPTIONS = Path(__file__).resolve().parents[1] / "icefall" / "shared" / "parse_options.sh"

SCRIPT = """#!/usr/bin/env bash
set -eou pipefail
stage=0
stop_stage=5
use_gpu=true
dl_dir=download
help_message="Usage: $0 [--stage N] [--stop-stage N] <out-dir>"
. "{parse_options}"
echo "stage=$stage stop_stage=$stop_stage use_gpu=$use_gpu dl_dir=$dl_dir"
echo "args=$#:$*"
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "prepare.sh"
    path.write_text(SCRIPT.format(parse_options=PARSE_OPTIONS))
    return path


def run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, cwd=script.parent
    )


def test_defaults_without_options(script: Path) -> None:
    result = run(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stage=0 stop_stage=5 use_gpu=true dl_dir=download",
        "args=0:",
    ]


def test_sets_defined_variables_and_keeps_positional_args(script: Path) -> None:
    result = run(script, "--stage", "-1", "--stop-stage", "4", "--dl-dir", "my dir", "out", "x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stage=-1 stop_stage=4 use_gpu=true dl_dir=my dir",
        "args=2:out x",
    ]


def test_stops_at_first_non_option(script: Path) -> None:
    result = run(script, "out", "--stage", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("stage=0 ")
    assert result.stdout.splitlines()[1] == "args=3:out --stage 3"


def test_boolean_variables_accept_true_or_false(script: Path) -> None:
    result = run(script, "--use-gpu", "false")
    assert result.returncode == 0 and "use_gpu=false" in result.stdout
    result = run(script, "--use-gpu", "yes")
    assert result.returncode == 1
    assert "'--use-gpu' expects true or false, got 'yes'" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stage=3"], "must be of the form --name value"),
        (["--no-such-option", "1"], "invalid option '--no-such-option'"),
        (["--stage"], "option '--stage' needs a value"),
        (["--config", "missing.conf"], "cannot read config file 'missing.conf'"),
        (["--bad!name", "1"], "invalid option '--bad!name'"),
    ],
)
def test_rejects_bad_options(script: Path, args: list, message: str) -> None:
    result = run(script, *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "stage=" not in result.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_help_message(script: Path, flag: str) -> None:
    result = run(script, "--stage", "2", flag)
    assert result.returncode == 0
    assert result.stdout.strip() == f"Usage: {script} [--stage N] [--stop-stage N] <out-dir>"
    assert "stage=" not in result.stdout


def test_config_file_is_read_before_command_line_options(script: Path) -> None:
    (script.parent / "my.conf").write_text("stage=7\nstop_stage=9\n")
    result = run(script, "--stage", "1", "--config", "my.conf", "out")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stage=1 stop_stage=9 use_gpu=true dl_dir=download",
        "args=1:out",
    ]
