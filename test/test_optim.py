"""ScaledAdam and Eden of the streaming Zipformer recipe (optim.py)."""

import copy
import logging
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

RECIPE = (
    Path(__file__).resolve().parents[1]
    / "egs/librispeech/ASR/pruned_transducer_stateless7_streaming"
)
if str(RECIPE) not in sys.path:
    sys.path.insert(0, str(RECIPE))

from optim import Eden, ScaledAdam  # noqa: E402


def eden_formula(base_lr, batch, epoch, lr_batches, lr_epochs, warmup_batches=500.0):
    factor = ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25
    factor *= ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25
    warmup = 1.0 if batch >= warmup_batches else 0.5 + 0.5 * batch / warmup_batches
    return base_lr * factor * warmup


def make_optimizer(model: nn.Module, lr: float = 0.05, **kwargs) -> ScaledAdam:
    names = [[name for name, _ in model.named_parameters()]]
    return ScaledAdam(model.parameters(), lr=lr, parameters_names=names, **kwargs)


@pytest.mark.parametrize(
    "batch, epoch", [(0, 0), (250, 0), (500, 1), (5000, 3.5), (12345, 7), (100000, 30)]
)
def test_eden_follows_formula(batch, epoch):
    model = nn.Linear(3, 2)
    optimizer = make_optimizer(model, lr=0.05)
    scheduler = Eden(optimizer, lr_batches=5000, lr_epochs=3.5)
    scheduler.step_epoch(epoch)
    scheduler.step_batch(batch)
    expected = eden_formula(0.05, batch, epoch, 5000, 3.5)
    assert scheduler.get_last_lr() == pytest.approx([expected], rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)


def test_eden_reference_point_and_state_dict():
    optimizer = make_optimizer(nn.Linear(3, 2), lr=0.05)
    scheduler = Eden(optimizer, lr_batches=5000, lr_epochs=3.5)
    scheduler.step_epoch(3.5)
    scheduler.step_batch(5000)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.05 * 2**-0.5, rel=1e-12)
    state = scheduler.state_dict()
    assert set(state) == {"base_lrs", "epoch", "batch"}
    assert state == {"base_lrs": [0.05], "epoch": 3.5, "batch": 5000}

    other_optimizer = make_optimizer(nn.Linear(3, 2), lr=0.05)
    restored = Eden(other_optimizer, lr_batches=5000, lr_epochs=3.5)
    restored.load_state_dict(state)
    assert restored.get_last_lr() == scheduler.get_last_lr()
    scheduler.step_batch()
    restored.step_batch()
    assert restored.batch == 5001
    assert restored.get_last_lr() == scheduler.get_last_lr()


class Regression(nn.Module):
    """Several same-shape tensors (exercises stacking) plus scalars and a bias."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(8, 8)
        self.layer2 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 1)
        self.gain = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.layer2(torch.tanh(self.layer1(x))))) * self.gain


def regression_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]
    return x, y


def train_steps(model, optimizer, scheduler, x, y, num_steps, start_batch=0):
    losses = []
    for i in range(num_steps):
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        scheduler.step_batch(start_batch + i + 1)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_scaled_adam_decreases_regression_loss():
    torch.manual_seed(0)
    model = Regression()
    optimizer = make_optimizer(model, lr=0.05, clipping_scale=2.0)
    scheduler = Eden(optimizer, lr_batches=100, lr_epochs=1, warmup_batches=20)
    x, y = regression_data()
    losses = train_steps(model, optimizer, scheduler, x, y, 250)
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    # One state per stack of equal shapes: (8, 8) x2, (8,) x2, (1, 8), (1,), ().
    assert len(optimizer.state) == 5


def test_scaled_adam_state_dict_round_trip_gives_identical_trajectory():
    torch.manual_seed(0)
    model = Regression()
    optimizer = make_optimizer(model, lr=0.05, clipping_scale=2.0)
    scheduler = Eden(optimizer, lr_batches=100, lr_epochs=1, warmup_batches=20)
    x, y = regression_data()
    train_steps(model, optimizer, scheduler, x, y, 105)

    saved = {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scheduler": copy.deepcopy(scheduler.state_dict()),
    }
    continued = train_steps(model, optimizer, scheduler, x, y, 30, start_batch=105)

    torch.manual_seed(123)
    restored_model = Regression()
    restored_model.load_state_dict(saved["model"])
    restored_optimizer = make_optimizer(restored_model, lr=0.05, clipping_scale=2.0)
    restored_optimizer.load_state_dict(saved["optimizer"])
    restored_scheduler = Eden(restored_optimizer, lr_batches=100, lr_epochs=1, warmup_batches=20)
    restored_scheduler.load_state_dict(saved["scheduler"])
    resumed = train_steps(
        restored_model, restored_optimizer, restored_scheduler, x, y, 30, start_batch=105
    )
    assert resumed == continued
    for a, b in zip(model.parameters(), restored_model.parameters()):
        assert torch.equal(a, b)


def test_clipping_threshold_is_scale_times_median_and_clips_outliers(caplog):
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(4, 4))
    optimizer = ScaledAdam([weight], lr=0.01, clipping_scale=2.0, parameters_names=[["w"]])
    norms = []
    for step in range(101):
        grad = torch.randn(4, 4) * (1.0 + (step % 7))
        weight.grad = grad.clone()
        state = optimizer.state[weight]
        if step > 0:
            norms.append((grad * state["param_rms"].squeeze(0)).norm().item())
        optimizer.step()
    state = optimizer.state[weight]
    # At step 100 the threshold is re-estimated from the last 100 norms (steps 1..100).
    recorded = sorted(norms[-100:])
    assert state["model_norm_threshold"] == pytest.approx(2.0 * recorded[50], rel=1e-5)

    before = weight.detach().clone()
    weight.grad = torch.randn(4, 4) * 1e6
    with caplog.at_level(logging.WARNING):
        optimizer.step()
    assert state["num_clipped"] == 1
    assert "Scaling gradients by" in caplog.text
    assert "Parameter dominating tot_sumsq w" in caplog.text
    assert torch.isfinite(weight).all()
    # An unclipped Adam step is bounded anyway; clipping must keep the change tiny.
    assert (weight - before).abs().max().item() < 1.0


def test_scalar_parameters_are_clamped_and_large_tensors_shrink():
    scalar = nn.Parameter(torch.tensor(20.0))
    big = nn.Parameter(torch.full((8, 8), 5.0))
    optimizer = ScaledAdam([scalar, big], lr=0.05, parameters_names=[["s", "b"]])
    for _ in range(8):
        scalar.grad = torch.tensor(0.0)
        big.grad = torch.zeros(8, 8)
        optimizer.step()
    assert scalar.item() <= 10.0
    # RMS 5 > param_max_rms 3: the size update shrinks the tensor even with zero gradient.
    assert big.detach().pow(2).mean().sqrt().item() < 5.0


def test_parameters_names_must_match_groups():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="parameters_names"):
        ScaledAdam(model.parameters(), parameters_names=[["only_one"]])


def test_missing_gradients_are_treated_as_zero():
    used, unused = nn.Linear(3, 3), nn.Linear(3, 3)
    params = list(used.parameters()) + list(unused.parameters())
    optimizer = ScaledAdam(params, lr=0.05)
    before = copy.deepcopy(unused.state_dict())
    used(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in unused.state_dict().items())
    assert not math.isclose(used.weight.grad.abs().sum().item(), 0.0)
