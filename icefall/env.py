"""Facts about the software environment, stored in ``params.env_info`` of every checkpoint.

Nothing here imports k2 (it does not exist in this toolkit) and lhotse is not imported either:
its version and path come from the package metadata.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

import icefall

ICEFALL_DIR = Path(icefall.__file__).resolve().parent


def _git(*args: str) -> Optional[str]:
    """Output of ``git args`` run in the icefall source tree; None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(ICEFALL_DIR), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip()


def get_git_sha1() -> Optional[str]:
    """Short commit id of the icefall checkout, with ``-dirty`` if tracked files changed."""
    sha1 = _git("rev-parse", "--short", "HEAD")
    if sha1 is None:
        return None
    if _git("diff", "HEAD", "--shortstat"):
        sha1 += "-dirty"
    return sha1


def get_git_date() -> Optional[str]:
    """Commit date of the checked-out icefall commit."""
    return _git("log", "-1", "--format=%ad", "--date=local")


def get_git_branch_name() -> Optional[str]:
    """Current branch of the icefall checkout (``HEAD`` when detached)."""
    return _git("rev-parse", "--abbrev-ref", "HEAD")


def _package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_path(name: str) -> Optional[str]:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent)


def _ip_address(hostname: str) -> Optional[str]:
    try:
        return socket.gethostbyname(hostname)
    except OSError:
        return None


def get_env_info() -> dict[str, Any]:
    """Versions, git state and host of this run (JSON-serialisable values)."""
    hostname = socket.gethostname()
    return {
        "torch-version": str(torch.__version__),
        "torch-cuda-available": torch.cuda.is_available(),
        "torch-cuda-version": torch.version.cuda,
        "python-version": sys.version.split()[0],
        "lhotse-version": _package_version("lhotse"),
        "lhotse-path": _package_path("lhotse"),
        "icefall-version": icefall.__version__,
        "icefall-git-branch": get_git_branch_name(),
        "icefall-git-sha1": get_git_sha1(),
        "icefall-git-date": get_git_date(),
        "icefall-path": str(ICEFALL_DIR.parent),
        "hostname": hostname,
        "IP address": _ip_address(hostname),
    }
