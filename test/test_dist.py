"""Tests for icefall.dist: spawned (--world-size) and torchrun-style process groups."""

import json
import logging
import os
import socket
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from icefall.dist import (
    cleanup_dist,
    default_backend,
    get_local_rank,
    get_rank,
    get_world_size,
    setup_dist,
)
from icefall.utils import MetricsTracker, setup_logger

DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def clean_dist_env(monkeypatch):
    """No DDP variables in the environment during the test; the original ones afterwards."""
    saved = {name: os.environ.pop(name) for name in DIST_ENV if name in os.environ}
    yield monkeypatch
    cleanup_dist()
    monkeypatch.undo()
    for name in DIST_ENV:
        os.environ.pop(name, None)
    os.environ.update(saved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def spawned_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One process of a `--world-size 2` run: reduce a MetricsTracker and log."""
    setup_dist(rank, world_size, master_port=port)
    try:
        setup_logger(Path(out_dir) / "log" / "log-train", use_console=False)
        logging.info("worker started")
        tracker = MetricsTracker()
        tracker["frames"] = 100 * (rank + 1)
        tracker["utterances"] = 2
        tracker["loss"] = 0.5 + rank
        tracker["utt_duration"] = 7 * (rank + 1)
        tracker.reduce("cpu")
        result = {
            "tracker": dict(tracker),
            "rank": get_rank(),
            "world_size": get_world_size(),
            "local_rank": get_local_rank(),
            "backend": dist.get_backend(),
        }
        (Path(out_dir) / f"result-{rank}.json").write_text(json.dumps(result))
    finally:
        cleanup_dist()


def test_two_process_gloo_reduces_metrics_tracker(tmp_path: Path, clean_dist_env) -> None:
    mp.spawn(spawned_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    for rank in range(2):
        result = json.loads((tmp_path / f"result-{rank}.json").read_text())
        assert result["tracker"] == {
            "frames": 300.0,
            "utterances": 4.0,
            "loss": 2.0,
            "utt_duration": 21.0,
        }
        assert (result["rank"], result["world_size"], result["local_rank"]) == (rank, 2, rank)
        assert result["backend"] == default_backend() == "gloo"

    log_files = sorted((tmp_path / "log").iterdir())
    assert [f.name[-2:] for f in log_files] == ["-0", "-1"]
    assert "(1/2) worker started" in log_files[1].read_text()


def test_torchrun_environment(clean_dist_env) -> None:
    clean_dist_env.setenv("MASTER_ADDR", "localhost")
    clean_dist_env.setenv("MASTER_PORT", str(free_port()))
    clean_dist_env.setenv("RANK", "0")
    clean_dist_env.setenv("WORLD_SIZE", "1")
    clean_dist_env.setenv("LOCAL_RANK", "0")
    setup_dist(rank=5, world_size=7, use_ddp_launch=True)  # rank/world_size come from the env
    assert dist.is_initialized()
    assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
    cleanup_dist()
    assert not dist.is_initialized()
    cleanup_dist()  # a second call is harmless


def test_torchrun_mode_needs_the_environment(clean_dist_env) -> None:
    with pytest.raises(RuntimeError, match="MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE"):
        setup_dist(0, 1, use_ddp_launch=True)


def test_rank_helpers_read_the_environment_first(clean_dist_env) -> None:
    assert (get_rank(), get_world_size(), get_local_rank()) == (0, 1, 0)
    clean_dist_env.setenv("RANK", "3")
    clean_dist_env.setenv("WORLD_SIZE", "8")
    clean_dist_env.setenv("LOCAL_RANK", "1")
    assert (get_rank(), get_world_size(), get_local_rank()) == (3, 8, 1)


def test_spawn_mode_sets_master_address_and_port(clean_dist_env) -> None:
    port = free_port()
    setup_dist(0, 1, master_port=port, master_addr="127.0.0.1")
    assert os.environ["MASTER_PORT"] == str(port)
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"
    assert (get_rank(), get_world_size(), get_local_rank()) == (0, 1, 0)
