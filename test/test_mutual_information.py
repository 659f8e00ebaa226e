"""mutual_information_recursion against a brute-force enumeration of every lattice path."""

import itertools
import math
from typing import Dict, List, Tuple

import pytest
import torch

from icefall.mutual_information import BACKEND_ENV, mutual_information_recursion

Cell = Tuple[int, int]


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def enumerate_paths(
    px: List[List[float]], py: List[List[float]], box: List[int], modified: bool
) -> Tuple[float, Dict[Cell, float], Dict[Cell, float]]:
    """Total log-prob of every path from (s_begin, t_begin) to (s_end, t_end), and the
    occupation probability of each px / py transition, by listing all paths."""
    s_begin, t_begin, s_end, t_end = box
    num_s, num_t = s_end - s_begin, t_end - t_begin
    paths = []  # (score, px cells used, py cells used)
    if modified:
        for symbol_frames in itertools.combinations(range(t_begin, t_end), num_s):
            s, score, used_x, used_y = s_begin, 0.0, [], []
            for t in range(t_begin, t_end):
                if t in symbol_frames:
                    score += px[s][t]
                    used_x.append((s, t))
                    s += 1
                else:
                    score += py[s][t]
                    used_y.append((s, t))
            paths.append((score, used_x, used_y))
    else:
        for symbol_steps in itertools.combinations(range(num_s + num_t), num_s):
            s, t, score, used_x, used_y = s_begin, t_begin, 0.0, [], []
            for step in range(num_s + num_t):
                if step in symbol_steps:
                    score += px[s][t]
                    used_x.append((s, t))
                    s += 1
                else:
                    score += py[s][t]
                    used_y.append((s, t))
                    t += 1
            paths.append((score, used_x, used_y))
    total = -math.inf
    for score, _, _ in paths:
        total = _log_add(total, score)
    occupation_x: Dict[Cell, float] = {}
    occupation_y: Dict[Cell, float] = {}
    if total > -math.inf:
        for score, used_x, used_y in paths:
            weight = math.exp(score - total)
            for cell in used_x:
                occupation_x[cell] = occupation_x.get(cell, 0.0) + weight
            for cell in used_y:
                occupation_y[cell] = occupation_y.get(cell, 0.0) + weight
    return total, occupation_x, occupation_y


def random_boundary(B: int, S: int, T: int, modified: bool, gen: torch.Generator) -> torch.Tensor:
    rows = []
    for _ in range(B):
        s_begin, t_begin = (int(torch.randint(0, n + 1, (1,), generator=gen)) for n in (S, T))
        s_end = int(torch.randint(s_begin, S + 1, (1,), generator=gen))
        t_end = int(torch.randint(t_begin, T + 1, (1,), generator=gen))
        if modified:
            s_end = min(s_end, s_begin + t_end - t_begin)
        rows.append([s_begin, t_begin, s_end, t_end])
    return torch.tensor(rows, dtype=torch.int64)


def dense(occupation: Dict[Cell, float], shape: Tuple[int, int]) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float64)
    for (s, t), value in occupation.items():
        out[s, t] = value
    return out


@pytest.mark.parametrize("modified", [False, True])
def test_matches_brute_force_with_random_boundaries(modified: bool) -> None:
    gen = torch.Generator().manual_seed(1 + modified)
    for _ in range(8):
        B = 3
        S = int(torch.randint(0, 5, (1,), generator=gen))
        T = int(torch.randint(max(S, 1) if modified else 1, 6, (1,), generator=gen))
        px = torch.randn(B, S, T if modified else T + 1, dtype=torch.float64, generator=gen)
        py = torch.randn(B, S + 1, T, dtype=torch.float64, generator=gen)
        boundary = random_boundary(B, S, T, modified, gen)
        scores, (px_grad, py_grad) = mutual_information_recursion(
            px, py, boundary, return_grad=True
        )
        for b in range(B):
            total, occ_x, occ_y = enumerate_paths(
                px[b].tolist(), py[b].tolist(), boundary[b].tolist(), modified
            )
            assert scores[b].item() == pytest.approx(total, rel=1e-10, abs=1e-10)
            torch.testing.assert_close(px_grad[b], dense(occ_x, px.shape[1:]))
            torch.testing.assert_close(py_grad[b], dense(occ_y, py.shape[1:]))


@pytest.mark.parametrize("modified", [False, True])
def test_autograd_gives_the_occupation_probabilities(modified: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    B, S, T = 2, 3, 5
    px = torch.randn(B, S, T if modified else T + 1, dtype=torch.float64, generator=gen)
    py = torch.randn(B, S + 1, T, dtype=torch.float64, generator=gen)
    px.requires_grad_(True)
    py.requires_grad_(True)
    boundary = torch.tensor([[0, 0, 3, 5], [1, 1, 2, 4]])
    scores, (px_occ, py_occ) = mutual_information_recursion(px, py, boundary, return_grad=True)
    weights = torch.tensor([0.5, 2.0], dtype=torch.float64)
    px_grad, py_grad = torch.autograd.grad((scores * weights).sum(), [px, py])
    torch.testing.assert_close(px_grad, px_occ * weights.view(B, 1, 1))
    torch.testing.assert_close(py_grad, py_occ * weights.view(B, 1, 1))
    assert not px_occ.requires_grad


@pytest.mark.parametrize("modified", [False, True])
def test_gradcheck_float64(modified: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    B, S, T = 2, 3, 4
    px = torch.randn(B, S, T if modified else T + 1, dtype=torch.float64, generator=gen)
    py = torch.randn(B, S + 1, T, dtype=torch.float64, generator=gen)
    boundary = torch.tensor([[0, 0, 3, 4], [1, 0, 3, 3]])
    inputs = (px.requires_grad_(True), py.requires_grad_(True))
    assert torch.autograd.gradcheck(
        lambda x, y: mutual_information_recursion(x, y, boundary), inputs
    )
    assert torch.autograd.gradcheck(lambda x, y: mutual_information_recursion(x, y), inputs)


def naive_recursion(px: torch.Tensor, py: torch.Tensor, modified: bool) -> torch.Tensor:
    """Cell-by-cell recursion (vectorised over the batch only), for mid-sized lattices."""
    B, S, _ = px.shape
    T = py.shape[2]
    p = [[None] * (T + 1) for _ in range(S + 1)]
    neg_inf = torch.full((B,), -math.inf, dtype=px.dtype)
    for s in range(S + 1):
        for t in range(T + 1):
            if s == 0 and t == 0:
                p[s][t] = torch.zeros(B, dtype=px.dtype)
                continue
            via_blank = p[s][t - 1] + py[:, s, t - 1] if t > 0 else neg_inf
            if modified:
                via_symbol = p[s - 1][t - 1] + px[:, s - 1, t - 1] if s > 0 and t > 0 else neg_inf
            else:
                via_symbol = p[s - 1][t] + px[:, s - 1, t] if s > 0 else neg_inf
            p[s][t] = torch.logaddexp(via_symbol, via_blank)
    return p[S][T]


@pytest.mark.parametrize("modified", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mid_sized_lattice_matches_naive_recursion(modified: bool, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    B, S, T = 3, 17, 29
    px = torch.randn(B, S, T if modified else T + 1, generator=gen).to(dtype)
    py = torch.randn(B, S + 1, T, generator=gen).to(dtype)
    px[0, 3:6, 2:9] = -math.inf  # pruned-away regions are -inf
    py[1, 5, :] = -math.inf
    expected = naive_recursion(px.double(), py.double(), modified)
    scores = mutual_information_recursion(px, py)
    assert scores.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(scores.double(), expected, rtol=tolerance, atol=tolerance)


def test_impossible_lattice_gives_minus_inf_and_zero_grads() -> None:
    B, S, T = 2, 2, 3
    px = torch.randn(B, S, T + 1, dtype=torch.float64)
    py = torch.randn(B, S + 1, T, dtype=torch.float64)
    py[0, :, 1] = -math.inf  # utterance 0 cannot leave frame 1
    px.requires_grad_(True)
    py.requires_grad_(True)
    scores, (px_occ, py_occ) = mutual_information_recursion(px, py, return_grad=True)
    assert scores[0].item() == -math.inf
    assert torch.isfinite(scores[1])
    px_grad, py_grad = torch.autograd.grad(scores[1] + scores[0].clamp(min=-1e30), [px, py])
    for grad in (px_occ, py_occ, px_grad, py_grad):
        assert torch.isfinite(grad).all()
        assert grad[0].abs().sum() == 0


def test_padding_outside_the_boundary_is_ignored() -> None:
    gen = torch.Generator().manual_seed(6)
    B, S, T = 2, 4, 6
    px = torch.randn(B, S, T + 1, dtype=torch.float64, generator=gen)
    py = torch.randn(B, S + 1, T, dtype=torch.float64, generator=gen)
    boundary = torch.tensor([[0, 0, 2, 3], [1, 2, 4, 6]])
    reference, (px_ref, py_ref) = mutual_information_recursion(px, py, boundary, True)
    noisy_px, noisy_py = px.clone(), py.clone()
    noisy_px[0, 2:, :] = math.nan
    noisy_px[0, :, 4:] = 1e30
    noisy_py[0, 3:, :] = math.inf
    noisy_py[1, 0, :] = math.nan
    scores, (px_grad, py_grad) = mutual_information_recursion(noisy_px, noisy_py, boundary, True)
    torch.testing.assert_close(scores, reference)
    torch.testing.assert_close(px_grad, px_ref)
    torch.testing.assert_close(py_grad, py_ref)


def test_bad_boundary_is_a_clear_error() -> None:
    px = torch.zeros(1, 2, 4)
    py = torch.zeros(1, 3, 3)
    with pytest.raises(ValueError, match="utterance 0"):
        mutual_information_recursion(px, py, torch.tensor([[0, 0, 3, 3]]))
    with pytest.raises(ValueError, match="py must have shape"):
        mutual_information_recursion(px, torch.zeros(1, 2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("modified", [False, True])
def test_cuda_matches_cpu(modified: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    B, S, T = 4, 9, 13
    px = torch.randn(B, S, T if modified else T + 1, generator=gen)
    py = torch.randn(B, S + 1, T, generator=gen)
    boundary = torch.tensor([[0, 0, 9, 13], [0, 0, 5, 10], [2, 1, 7, 12], [0, 0, 0, 4]])
    cpu = mutual_information_recursion(px, py, boundary, return_grad=True)
    gpu = mutual_information_recursion(px.cuda(), py.cuda(), boundary.cuda(), return_grad=True)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gpu[1][0].cpu(), cpu[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gpu[1][1].cpu(), cpu[1][1], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("modified", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_triton_kernel_matches_torch_loop(
    modified: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(8)
    B, S, T = 5, 40, 70
    px = torch.randn(B, S, T if modified else T + 1, generator=gen).to("cuda", dtype)
    py = torch.randn(B, S + 1, T, generator=gen).to("cuda", dtype)
    px[1, 10:20, 5:30] = -math.inf
    boundary = torch.tensor(
        [[0, 0, 40, 70], [0, 0, 31, 66], [3, 2, 20, 50], [0, 0, 0, 9], [0, 0, 9, 9]]
    )
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv(BACKEND_ENV, backend)
        results[backend] = mutual_information_recursion(px, py, boundary.cuda(), return_grad=True)
    tolerance = 2e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(
        results["triton"][0], results["torch"][0], rtol=tolerance, atol=tolerance
    )
    for grad_triton, grad_torch in zip(results["triton"][1], results["torch"][1]):
        torch.testing.assert_close(grad_triton, grad_torch, rtol=tolerance, atol=tolerance)
