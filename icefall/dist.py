"""Distributed data parallel (DDP) set-up for both ways of starting the processes.

- ``--world-size N``: the training script starts N processes itself with
  ``torch.multiprocessing.spawn`` and calls ``setup_dist(rank, world_size, master_port)``
  in each (single node).
- ``torchrun`` (single or multi node): the launcher sets MASTER_ADDR, MASTER_PORT, RANK,
  WORLD_SIZE and LOCAL_RANK; the script calls ``setup_dist(..., use_ddp_launch=True)``.

The backend is NCCL when CUDA is available (each process then uses the GPU of its local rank),
else gloo.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist

DEFAULT_MASTER_ADDR = "localhost"
DEFAULT_MASTER_PORT = 12354


def _is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """WORLD_SIZE from the environment, else from the process group, else 1."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if _is_initialized():
        return dist.get_world_size()
    return 1


def get_rank() -> int:
    """RANK from the environment, else from the process group, else 0."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if _is_initialized():
        return dist.get_rank()
    return 0


def get_local_rank() -> int:
    """LOCAL_RANK from the environment, else the global rank (single-node spawn), else 0."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    if _is_initialized():
        return dist.get_rank()
    return 0


def default_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def setup_dist(
    rank: int,
    world_size: int,
    master_port: Optional[int] = None,
    use_ddp_launch: bool = False,
    master_addr: Optional[str] = None,
) -> None:
    """Join the process group.

    Args:
      rank: this process's rank (ignored with ``use_ddp_launch``: RANK is read from the env).
      world_size: number of processes (ignored with ``use_ddp_launch``).
      master_port: rendezvous port; default: MASTER_PORT from the env, else 12354.
      use_ddp_launch: the processes were started by ``torchrun``; everything comes from the env.
      master_addr: rendezvous host; default: MASTER_ADDR from the env, else localhost.
    """
    backend = default_backend()
    if use_ddp_launch:
        missing = [
            name
            for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
            if name not in os.environ
        ]
        if missing:
            raise RuntimeError(
                f"use_ddp_launch needs {', '.join(missing)} in the environment "
                "(start the script with torchrun)"
            )
        if backend == "nccl":
            torch.cuda.set_device(get_local_rank())
        dist.init_process_group(backend, init_method="env://")
        return

    if master_addr is not None:
        os.environ["MASTER_ADDR"] = str(master_addr)
    else:
        os.environ.setdefault("MASTER_ADDR", DEFAULT_MASTER_ADDR)
    if master_port is not None:
        os.environ["MASTER_PORT"] = str(master_port)
    else:
        os.environ.setdefault("MASTER_PORT", str(DEFAULT_MASTER_PORT))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, init_method="env://")


def cleanup_dist() -> None:
    """Leave the process group (no-op when none was joined)."""
    if _is_initialized():
        dist.destroy_process_group()
