"""Tests for icefall.checkpoint: layout, atomic saving, averaging and the running averaged model."""

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from icefall.checkpoint import (
    average_checkpoints,
    average_checkpoints_with_averaged_model,
    average_state_dict,
    find_checkpoints,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
    save_checkpoint_with_global_batch_idx,
    update_averaged_model,
)
from icefall.utils import AttributeDict


class TinyModel(nn.Module):
    """Float parameters, a tied weight, an integer buffer and a bool buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.proj = nn.Linear(3, 5)
        self.proj.weight = self.embed.weight  # tied, like a shared embedding/output layer
        self.norm = nn.BatchNorm1d(3)  # has an int64 buffer: num_batches_tracked
        self.register_buffer("count", torch.zeros(4, dtype=torch.int64))
        self.register_buffer("flag", torch.tensor([True, False]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.embed(x)))


class CountingSampler:
    """Any object with state_dict()/load_state_dict() can be checkpointed as the sampler."""

    def __init__(self) -> None:
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def random_model(seed: int) -> TinyModel:
    torch.manual_seed(seed)
    model = TinyModel()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        model.norm.running_mean.normal_()
        model.norm.num_batches_tracked.fill_(seed)
        model.count.copy_(torch.randint(0, 100, (4,)))
    return model


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_round_trip_restores_every_object(tmp_path: Path) -> None:
    model = random_model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    model(torch.tensor([1, 2, 3])).sum().backward()
    optimizer.step()
    scheduler.step()
    sampler = CountingSampler()
    sampler.position = 17
    params = AttributeDict({"batch_idx_train": 42, "cur_epoch": 3, "exp_dir": tmp_path})

    filename = tmp_path / "epoch-3.pt"
    save_checkpoint(filename, model, None, params, optimizer, scheduler, scaler, sampler)

    saved = torch.load(filename, weights_only=False)
    assert {"model", "optimizer", "scheduler", "grad_scaler", "sampler"} <= saved.keys()
    assert saved["batch_idx_train"] == 42 and saved["cur_epoch"] == 3
    assert "model_avg" not in saved

    new_model = random_model(1)
    new_optimizer = torch.optim.SGD(new_model.parameters(), lr=0.1, momentum=0.9)
    new_scheduler = torch.optim.lr_scheduler.StepLR(new_optimizer, step_size=1, gamma=0.5)
    new_scaler = torch.amp.GradScaler("cpu")
    new_sampler = CountingSampler()
    rest = load_checkpoint(
        filename,
        new_model,
        optimizer=new_optimizer,
        scheduler=new_scheduler,
        scaler=new_scaler,
        sampler=new_sampler,
        strict=True,
    )
    assert_same_state(model.state_dict(), new_model.state_dict())
    assert new_scheduler.state_dict() == scheduler.state_dict()
    assert new_scaler.get_scale() == 4.0
    assert new_sampler.position == 17
    momentum = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(new_optimizer.state_dict()["state"][0]["momentum_buffer"], momentum)
    assert rest["batch_idx_train"] == 42 and rest["exp_dir"] == tmp_path
    assert "model" not in rest and "optimizer" not in rest


def test_load_accepts_ddp_prefixed_state(tmp_path: Path) -> None:
    model = random_model(2)
    prefixed = {f"module.{k}": v for k, v in model.state_dict().items()}
    filename = tmp_path / "ddp.pt"
    torch.save({"model": prefixed, "optimizer": None, "cur_epoch": 1}, filename)

    new_model = random_model(3)
    rest = load_checkpoint(filename, new_model, strict=True)
    assert_same_state(model.state_dict(), new_model.state_dict())
    assert rest == {"cur_epoch": 1}


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt", TinyModel())
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "other.pt", TinyModel())


def test_params_must_not_clash_and_other_ranks_do_not_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clashes"):
        save_checkpoint(tmp_path / "a.pt", TinyModel(), params={"optimizer": 1})
    save_checkpoint(tmp_path / "b.pt", TinyModel(), rank=1)
    assert not (tmp_path / "b.pt").exists()


def test_saving_keeps_the_running_average_in_float64(tmp_path: Path) -> None:
    model = random_model(4)
    model_avg = copy.deepcopy(model).to(torch.float64)
    save_checkpoint(tmp_path / "c.pt", model, model_avg=model_avg)

    assert all(p.dtype == torch.float64 for p in model_avg.parameters())
    saved_avg = torch.load(tmp_path / "c.pt", weights_only=False)["model_avg"]
    for key, value in model_avg.state_dict().items():
        if value.is_floating_point():
            assert saved_avg[key].dtype == torch.float32
            assert torch.equal(saved_avg[key], value.float())
        else:
            assert torch.equal(saved_avg[key], value)

    assert saved_avg["proj.weight"].data_ptr() == saved_avg["embed.weight"].data_ptr()

    loaded_avg = copy.deepcopy(model).to(torch.float64)
    load_checkpoint(tmp_path / "c.pt", random_model(5), model_avg=loaded_avg)
    assert loaded_avg.embed.weight.dtype == torch.float64
    assert torch.equal(loaded_avg.embed.weight, model_avg.embed.weight.float().double())


KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from icefall.checkpoint import save_checkpoint

    real_save = torch.save

    class DieMidWrite:
        # File wrapper that kills the process once part of the checkpoint has been written.
        def __init__(self, f):
            self.f, self.written = f, 0
        def write(self, data):
            n = self.f.write(data)
            self.written += n
            if self.written > 100_000:
                self.f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return n
        def flush(self):
            self.f.flush()

    torch.save = lambda obj, f, **kw: real_save(obj, DieMidWrite(f), **kw)
    model = torch.nn.Linear(1000, 1000)
    torch.nn.init.constant_(model.weight, 2.0)
    save_checkpoint(sys.argv[1], model, params={"cur_epoch": 2})
    """
)


def test_save_killed_mid_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    filename = tmp_path / "epoch-1.pt"
    old = nn.Linear(1000, 1000)
    nn.init.constant_(old.weight, 1.0)
    save_checkpoint(filename, old, params={"cur_epoch": 1})

    result = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(filename)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == -9, result.stderr
    leftovers = [p for p in tmp_path.iterdir() if p.name != filename.name]
    assert leftovers and leftovers[0].stat().st_size > 100_000  # the write really started

    restored = nn.Linear(1000, 1000)
    rest = load_checkpoint(filename, restored, strict=True)
    assert rest["cur_epoch"] == 1
    assert torch.equal(restored.weight, old.weight)

    # The next successful save replaces the file and removes the killed save's leftover.
    save_checkpoint(filename, nn.Linear(2, 2), params={"cur_epoch": 2})
    assert [p.name for p in tmp_path.iterdir()] == [filename.name]
    assert load_checkpoint(filename, nn.Linear(2, 2))["cur_epoch"] == 2


def test_saved_file_has_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    save_checkpoint(tmp_path / "a.pt", nn.Linear(2, 2))
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_save_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    filename = tmp_path / "epoch-1.pt"
    save_checkpoint(filename, nn.Linear(2, 2), params={"cur_epoch": 1})

    def crash(obj, f, **kwargs) -> None:
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(filename, nn.Linear(2, 2), params={"cur_epoch": 2})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-1.pt"]
    assert load_checkpoint(filename, nn.Linear(2, 2))["cur_epoch"] == 1


def test_average_of_three_checkpoints_is_exact(tmp_path: Path) -> None:
    models = [random_model(seed) for seed in (10, 11, 12)]
    filenames = []
    for i, model in enumerate(models):
        filenames.append(tmp_path / f"epoch-{i}.pt")
        save_checkpoint(filenames[-1], model)

    avg = average_checkpoints(filenames)

    states = [m.state_dict() for m in models]
    for key, value in avg.items():
        a, b, c = (s[key] for s in states)
        if value.dtype == torch.bool:
            expected = a
        elif value.is_floating_point():
            expected = (a + b + c) / 3
        else:
            expected = (a + b + c) // 3
        assert value.dtype == a.dtype, key
        assert torch.equal(value, expected), key
    assert avg["norm.num_batches_tracked"].item() == (10 + 11 + 12) // 3
    # The tied weight is averaged once, and stays shared.
    assert avg["proj.weight"].data_ptr() == avg["embed.weight"].data_ptr()


def test_average_state_dict_in_place() -> None:
    sd1 = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3])}
    sd2 = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([5])}
    average_state_dict(sd1, sd2, weight_1=0.5, weight_2=0.25, scaling_factor=2.0)
    assert torch.equal(sd1["w"], torch.tensor([2.5, 5.0]))
    assert torch.equal(sd1["n"], torch.tensor([3]))


def test_averaged_model_interval_gives_mean_of_snapshots(tmp_path: Path) -> None:
    average_period = 3
    snapshots = [random_model(100 + k) for k in range(9)]  # taken at batches 3, 6, ..., 27
    model_avg = copy.deepcopy(random_model(99)).to(torch.float64)
    params = AttributeDict({"average_period": average_period})

    for k, snapshot in enumerate(snapshots, start=1):
        params.batch_idx_train = k * average_period
        update_averaged_model(params, snapshot, model_avg)
        if k in (2, 8):
            # Saved a little after the update: the batch count is rounded down.
            params.batch_idx_train += 1
            save_checkpoint(tmp_path / f"ckpt-{k}.pt", snapshot, model_avg, params)

    def mean_of(models: list) -> dict:
        return {
            key: sum(m.state_dict()[key].double() for m in models) / len(models)
            for key, value in models[0].state_dict().items()
            if value.is_floating_point()
        }

    running = mean_of(snapshots)
    for key, value in running.items():
        torch.testing.assert_close(model_avg.state_dict()[key], value, rtol=1e-12, atol=1e-12)

    interval = average_checkpoints_with_averaged_model(
        tmp_path / "ckpt-2.pt", tmp_path / "ckpt-8.pt"
    )
    expected = mean_of(snapshots[2:8])  # snapshots at batches 9..24, i.e. in (6, 24]
    for key, value in expected.items():
        assert interval[key].dtype == torch.float32
        torch.testing.assert_close(interval[key].double(), value, rtol=1e-5, atol=1e-5)


def test_interval_average_needs_model_avg(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a.pt", TinyModel(), params={"batch_idx_train": 3})
    save_checkpoint(tmp_path / "b.pt", TinyModel(), params={"batch_idx_train": 6})
    with pytest.raises(ValueError, match="model_avg"):
        average_checkpoints_with_averaged_model(tmp_path / "a.pt", tmp_path / "b.pt")


def test_find_and_remove_checkpoints(tmp_path: Path) -> None:
    model = nn.Linear(1, 1)
    for batch in (5, 100, 20, 7):
        save_checkpoint_with_global_batch_idx(tmp_path, batch, model)
    (tmp_path / "checkpoint-abc.pt").touch()
    (tmp_path / ".checkpoint-9.pt.x1y2.tmp").touch()
    (tmp_path / "epoch-1.pt").touch()

    names = [Path(p).name for p in find_checkpoints(tmp_path)]
    assert names == ["checkpoint-100.pt", "checkpoint-20.pt", "checkpoint-7.pt", "checkpoint-5.pt"]
    assert [Path(p).name for p in find_checkpoints(tmp_path, iteration=20)] == names[:2]
    assert [Path(p).name for p in find_checkpoints(tmp_path, iteration=-7)] == names[2:]

    remove_checkpoints(tmp_path, topk=2, rank=1)
    assert len(find_checkpoints(tmp_path)) == 4
    remove_checkpoints(tmp_path, topk=2)
    assert [Path(p).name for p in find_checkpoints(tmp_path)] == names[:2]
    assert (tmp_path / "epoch-1.pt").exists()
    with pytest.raises(ValueError, match="topk"):
        remove_checkpoints(tmp_path, topk=0)


def test_non_strict_load_warns_about_mismatched_keys(tmp_path: Path, caplog) -> None:
    save_checkpoint(tmp_path / "a.pt", nn.Linear(2, 2))
    model = nn.Sequential(nn.Linear(2, 2))
    with caplog.at_level("WARNING"):
        load_checkpoint(tmp_path / "a.pt", model)
    assert "2 missing keys: ['0.weight', '0.bias']" in caplog.text
    assert "2 unexpected keys: ['weight', 'bias']" in caplog.text
    with pytest.raises(RuntimeError, match="Missing key"):
        load_checkpoint(tmp_path / "a.pt", model, strict=True)
