"""Tests for icefall.env, icefall.hooks and icefall.err."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import icefall.env
from icefall.env import get_env_info, get_git_branch_name, get_git_date, get_git_sha1
from icefall.err import GradScaleTooSmallError, raise_grad_scale_is_too_small_error
from icefall.hooks import register_inf_check_hooks

REPO = Path(__file__).resolve().parents[1]


def test_env_info_contents() -> None:
    info = get_env_info()
    assert info["torch-version"] == str(torch.__version__)
    assert info["python-version"] == sys.version.split()[0]
    assert info["torch-cuda-available"] == torch.cuda.is_available()
    assert info["lhotse-version"] and Path(info["lhotse-path"]).is_dir()
    assert info["icefall-path"] == str(REPO)
    assert info["hostname"]
    assert not any(key.startswith("k2") for key in info)
    json.dumps(info)  # stored in params and printed as JSON


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_git_info_in_a_checkout() -> None:
    sha1 = get_git_sha1()
    assert sha1 and all(c in "0123456789abcdef" for c in sha1.removesuffix("-dirty"))
    assert get_git_date() and get_git_branch_name()


def test_git_info_outside_a_checkout(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(icefall.env, "ICEFALL_DIR", tmp_path)
    assert get_git_sha1() is None and get_git_date() is None and get_git_branch_name() is None


def test_library_never_imports_k2_kaldifeat_or_torchaudio() -> None:
    code = (
        "import sys, icefall, icefall.utils, icefall.checkpoint, icefall.dist, icefall.env, "
        "icefall.hooks, icefall.err\n"
        "icefall.env.get_env_info()\n"
        "bad = {'k2', 'kaldifeat', 'torchaudio'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


class Blowup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 3)
        self.second = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def test_inf_check_hooks_report_outputs_and_gradients(caplog) -> None:
    model = Blowup()
    handles = register_inf_check_hooks(model)
    x = torch.randn(2, 3)

    with caplog.at_level(logging.WARNING):
        model(x).sum().backward()
    assert caplog.text == ""

    with caplog.at_level(logging.WARNING):
        (model(x).sum() * float("nan")).backward()
    assert "The sum of model.output[0].grad is not finite" in caplog.text
    assert "The sum of first.output[0].grad is not finite" in caplog.text
    assert "The sum of second.weight.param_grad is not finite" in caplog.text

    caplog.clear()
    with torch.no_grad():
        model.first.weight.fill_(float("inf"))
    with caplog.at_level(logging.WARNING):
        model(x)
    assert "The sum of first.output[0] is not finite" in caplog.text

    for handle in handles:
        handle.remove()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model(x)
    assert caplog.text == ""


def test_grad_scale_error_gives_advice() -> None:
    with pytest.raises(GradScaleTooSmallError, match="grad_scale is too small") as info:
        raise_grad_scale_is_too_small_error(1e-6)
    message = str(info.value)
    assert "1e-06" in message and "--base-lr" in message and "--inf-check" in message
    assert isinstance(info.value, RuntimeError)
