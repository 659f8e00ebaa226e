"""Shared pytest fixtures.

``tiny_ci_dir``: a prepared ``ci``-size tiny corpus (all stages of ``egs/tiny/ASR/prepare.sh``).
It returns a directory ``.../egs/tiny/ASR`` (so corpus auto-detection from the current directory
works) holding ``data/`` (manifests, fbank cuts, ``lang_bpe_256``) and ``download/tiny``, with
symlinks to the recipe's ``prepare.sh``, ``local``, ``shared`` and recipe folder. Feature paths
in the cut manifests are relative to that directory (as in icefall), so a test that loads features
should ``monkeypatch.chdir(tiny_ci_dir)``. Tests may read it but must not write into it: copy what
you need to ``tmp_path`` (or pass ``--exp-dir`` under ``tmp_path``).

The prepared directory is cached under the pytest cache, keyed by a hash of every source file the
preparation runs, so repeated local runs reuse it; a fresh checkout (CI) builds it once per session.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "egs" / "tiny" / "ASR"
TINY_LINKS = ("prepare.sh", "local", "shared", "pruned_transducer_stateless7_streaming")


# The library modules prepare.sh runs (the data module itself does not change the prepared data).
PREPARE_MODULES = (
    "tts_corpus",
    "text_sources",
    "noise",
    "compute_fbank",
    "compute_fbank_musan",
    "fbank",
    "train_bpe",
    "bpe",
    "validate_manifest",
    "validate",
)
# Builds of other source versions unused for this long are removed (other sessions may still
# be reading younger ones).
STALE_SECONDS = 3 * 3600


def tiny_sources_hash() -> str:
    """md5 over the files that determine the prepared ci corpus."""
    files = [TINY_RECIPE / "prepare.sh", REPO / "icefall" / "shared" / "parse_options.sh"]
    files += sorted((TINY_RECIPE / "local").glob("*.py"))
    files += [REPO / "icefall" / "data" / f"{name}.py" for name in PREPARE_MODULES]
    h = hashlib.md5()
    for path in files:
        if path.exists():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def make_tiny_workdir(root: Path) -> Path:
    """Creates ``root/egs/tiny/ASR`` with symlinks to the recipe's scripts; returns it."""
    work = root / "egs" / "tiny" / "ASR"
    work.mkdir(parents=True, exist_ok=True)
    for name in TINY_LINKS:
        link = work / name
        if not link.is_symlink():
            link.symlink_to(TINY_RECIPE / name)
    return work


def tiny_env() -> dict[str, str]:
    """Environment for prepare.sh: this interpreter's bin first on PATH, one BLAS thread."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def remove_stale_builds(cache_root: Path, keep: Path) -> None:
    """Deletes the builds in ``cache_root`` other than ``keep`` not used for STALE_SECONDS."""
    now = time.time()
    for build in cache_root.iterdir():
        if not build.is_dir() or build == keep:
            continue
        stamp = build / ".complete"
        last_used = (stamp if stamp.exists() else build).stat().st_mtime
        if now - last_used > STALE_SECONDS:
            shutil.rmtree(build, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_ci_dir(request: pytest.FixtureRequest) -> Path:
    """Path of a prepared ci-size tiny corpus (``.../egs/tiny/ASR``); read-only for tests."""
    cache_root = Path(request.config.cache.mkdir("tiny_ci"))
    text_cache = Path(request.config.cache.mkdir("tiny_text"))
    root = cache_root / tiny_sources_hash()
    complete = root / ".complete"
    with open(cache_root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        work = root / "egs" / "tiny" / "ASR"
        remove_stale_builds(cache_root, keep=root)
        if complete.exists():
            complete.touch()
            return work
        if root.exists():
            shutil.rmtree(root)
        work = make_tiny_workdir(root)
        (work / "download").mkdir()
        # The unpacked Debian text packages survive source changes.
        (work / "download" / "text").symlink_to(text_cache)
        result = subprocess.run(
            ["./prepare.sh", "--size", "ci", "--nj", "2"],
            cwd=work,
            env=tiny_env(),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"egs/tiny/ASR/prepare.sh --size ci failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        complete.touch()
    return work
