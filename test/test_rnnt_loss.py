"""The k2-style RNN-T losses against a brute-force oracle that lists every alignment.

The oracle never uses px/py from the code under test: it computes each transition's log-prob
from the raw logits with log_softmax, and sums the probabilities of all alignments.
"""

import itertools
import logging
import math
from typing import Callable, List, Optional

import pytest
import torch

from icefall.rnnt_loss import (
    _roll_by_shifts,
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_loss_smoothed,
)

BLANK = 0
# log_prob(b, s, t, c): log-prob of emitting token c in lattice cell (s, t) of utterance b.
CellLogProb = Callable[[int, int, int, int], float]


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def oracle_log_prob(
    log_prob: CellLogProb,
    symbols: List[int],
    box: List[int],
    rnnt_type: str,
    delay_penalty: float = 0.0,
) -> float:
    """log P(symbols) summed over every alignment from (s_begin, t_begin) to (s_end, t_end).

    regular: a symbol keeps the frame (only on frames t < t_end), blank moves to the next frame;
    modified: every token consumes one frame; constrained: modified, and a symbol also pays the
    blank of the next context on the same frame.
    """
    s_begin, t_begin, s_end, t_end = box
    num_s, num_t = s_end - s_begin, t_end - t_begin
    penalty = (lambda t: delay_penalty * ((t_end - 1) / 2 - t)) if delay_penalty else (lambda t: 0)
    total = -math.inf
    if rnnt_type == "regular":
        for symbol_steps in itertools.combinations(range(num_s + num_t), num_s):
            s, t, score = s_begin, t_begin, 0.0
            for step in range(num_s + num_t):
                if step in symbol_steps:
                    if t >= t_end:
                        score = -math.inf
                        break
                    score += log_prob(s, t, symbols[s]) + penalty(t)
                    s += 1
                else:
                    score += log_prob(s, t, BLANK)
                    t += 1
            total = _log_add(total, score)
        return total
    for symbol_frames in itertools.combinations(range(t_begin, t_end), num_s):
        s, score = s_begin, 0.0
        for t in range(t_begin, t_end):
            if t in symbol_frames:
                score += log_prob(s, t, symbols[s]) + penalty(t)
                if rnnt_type == "constrained":
                    score += log_prob(s + 1, t, BLANK)
                s += 1
            else:
                score += log_prob(s, t, BLANK)
        total = _log_add(total, score)
    return total


def random_problem(gen: torch.Generator, rnnt_type: str, begins: bool = False):
    """Random tiny sizes (B <= 3, S <= 4, T <= 5) and per-utterance boundaries."""

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    B, S = draw(1, 3), draw(1, 4)
    T = draw(max(S, 2) if rnnt_type != "regular" else 2, 5)
    C = 5
    symbols = torch.randint(1, C, (B, S), generator=gen)
    rows = []
    for _ in range(B):
        t_end = draw((T + 1) // 2, T)
        s_end = draw(S // 2, S)
        if rnnt_type != "regular":
            s_end = min(s_end, t_end)
        s_begin = draw(0, s_end // 2) if begins else 0
        t_begin = 0
        if begins:
            slack = t_end - (s_end - s_begin) if rnnt_type != "regular" else t_end - 1
            t_begin = draw(0, min(slack, 1))
        rows.append([s_begin, t_begin, s_end, t_end])
    return B, S, T, C, symbols, torch.tensor(rows, dtype=torch.int64)


def check_against_oracle(
    losses: torch.Tensor,
    log_prob_of: Callable[[int], CellLogProb],
    symbols: torch.Tensor,
    boundary: torch.Tensor,
    rnnt_type: str,
    delay_penalty: float = 0.0,
) -> None:
    for b in range(losses.shape[0]):
        expected = -oracle_log_prob(
            log_prob_of(b), symbols[b].tolist(), boundary[b].tolist(), rnnt_type, delay_penalty
        )
        assert losses[b].item() == pytest.approx(expected, rel=1e-5, abs=1e-8), (b, rnnt_type)


def joint_log_prob(lm: torch.Tensor, am: torch.Tensor) -> Callable[[int], CellLogProb]:
    """Additive joiner: log_softmax(lm[b, s] + am[b, t])."""
    table = torch.log_softmax(lm.unsqueeze(2) + am.unsqueeze(1), dim=-1)  # (B, S+1, T, C)
    return lambda b: lambda s, t, c: table[b, s, t, c].item()


RNNT_TYPES = ["regular", "modified", "constrained"]


@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_simple_loss_matches_oracle(rnnt_type: str) -> None:
    gen = torch.Generator().manual_seed(10)
    for trial in range(6):
        B, S, T, C, symbols, boundary = random_problem(gen, rnnt_type, begins=trial % 2 == 1)
        lm = torch.randn(B, S + 1, C, dtype=torch.float64, generator=gen)
        am = torch.randn(B, T, C, dtype=torch.float64, generator=gen)
        penalty = 0.3 if trial % 3 == 2 else 0.0
        losses = rnnt_loss_simple(
            lm, am, symbols, BLANK, boundary, rnnt_type, penalty, reduction="none"
        )
        check_against_oracle(losses, joint_log_prob(lm, am), symbols, boundary, rnnt_type, penalty)


@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_full_loss_matches_oracle(rnnt_type: str) -> None:
    gen = torch.Generator().manual_seed(11)
    for trial in range(6):
        B, S, T, C, symbols, boundary = random_problem(gen, rnnt_type, begins=trial % 2 == 1)
        logits = torch.randn(B, T, S + 1, C, dtype=torch.float64, generator=gen)
        table = torch.log_softmax(logits, dim=-1)
        penalty = 0.2 if trial == 3 else 0.0
        losses = rnnt_loss(logits, symbols, BLANK, boundary, rnnt_type, penalty, reduction="none")
        check_against_oracle(
            losses,
            lambda b, table=table: lambda s, t, c: table[b, t, s, c].item(),
            symbols,
            boundary,
            rnnt_type,
            penalty,
        )


def smoothed_log_prob(
    lm: torch.Tensor, am: torch.Tensor, lm_scale: float, am_scale: float
) -> Callable[[int], CellLogProb]:
    """Interpolation of the joint, LM-only and AM-only (unigram LM) log-probs."""
    joint = torch.log_softmax(lm.unsqueeze(2) + am.unsqueeze(1), dim=-1)  # (B, S+1, T, C)
    lm_only = torch.log_softmax(lm, dim=-1)  # (B, S+1, C)
    unigram = torch.softmax(lm, dim=-1).mean(dim=(0, 1))  # (C,)
    am_only = torch.log_softmax(am + unigram.log(), dim=-1)  # (B, T, C)
    joint_scale = 1.0 - lm_scale - am_scale
    lm_scale = lm_scale or 1e-20
    am_scale = am_scale or 1e-20

    def of_utterance(b: int) -> CellLogProb:
        return lambda s, t, c: (
            joint_scale * joint[b, s, t, c]
            + lm_scale * lm_only[b, s, c]
            + am_scale * am_only[b, t, c]
        ).item()

    return of_utterance


@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
@pytest.mark.parametrize("scales", [(0.25, 0.0), (0.1, 0.2)])
def test_smoothed_loss_matches_oracle(rnnt_type: str, scales) -> None:
    gen = torch.Generator().manual_seed(12)
    for trial in range(4):
        B, S, T, C, symbols, boundary = random_problem(gen, rnnt_type, begins=trial == 1)
        lm = torch.randn(B, S + 1, C, dtype=torch.float64, generator=gen)
        am = torch.randn(B, T, C, dtype=torch.float64, generator=gen)
        losses = rnnt_loss_smoothed(
            lm, am, symbols, BLANK, *scales, boundary, rnnt_type, reduction="none"
        )
        check_against_oracle(
            losses, smoothed_log_prob(lm, am, *scales), symbols, boundary, rnnt_type
        )


def pruned_problem(gen: torch.Generator, rnnt_type: str, s_range: int):
    B, S, T, C, symbols, boundary = random_problem(gen, rnnt_type)
    lm = torch.randn(B, S + 1, C, dtype=torch.float64, generator=gen)
    am = torch.randn(B, T, C, dtype=torch.float64, generator=gen)
    _, (px_grad, py_grad) = rnnt_loss_smoothed(
        lm, am, symbols, BLANK, 0.25, 0.0, boundary, rnnt_type, return_grad=True
    )
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    logits = torch.randn(B, T, ranges.shape[2], C, dtype=torch.float64, generator=gen)
    return symbols, boundary, ranges, logits


def pruned_log_prob(logits: torch.Tensor, ranges: torch.Tensor, hat: bool):
    if hat:
        blank = torch.nn.functional.logsigmoid(logits[..., BLANK : BLANK + 1])
        non_blank = torch.nn.functional.logsigmoid(-logits[..., BLANK : BLANK + 1])
        table = non_blank + torch.log_softmax(logits[..., 1:], dim=-1)
        table = torch.cat([blank, table], dim=-1)
    else:
        table = torch.log_softmax(logits, dim=-1)

    def of_utterance(b: int) -> CellLogProb:
        def log_prob(s: int, t: int, c: int) -> float:
            kept = ranges[b, t].tolist()
            return table[b, t, kept.index(s), c].item() if s in kept else -math.inf

        return log_prob

    return of_utterance


@pytest.mark.parametrize("rnnt_type", ["regular", "modified"])
@pytest.mark.parametrize("use_hat_loss", [False, True])
def test_pruned_loss_matches_oracle(rnnt_type: str, use_hat_loss: bool) -> None:
    gen = torch.Generator().manual_seed(13)
    for s_range in (2, 3, 2, 3):
        symbols, boundary, ranges, logits = pruned_problem(gen, rnnt_type, s_range)
        losses = rnnt_loss_pruned(
            logits,
            symbols,
            ranges,
            BLANK,
            boundary,
            rnnt_type,
            reduction="none",
            use_hat_loss=use_hat_loss,
        )
        check_against_oracle(
            losses, pruned_log_prob(logits, ranges, use_hat_loss), symbols, boundary, rnnt_type
        )


@pytest.mark.parametrize("rnnt_type", ["regular", "modified"])
def test_pruned_with_full_range_equals_full_loss(rnnt_type: str) -> None:
    gen = torch.Generator().manual_seed(14)
    B, S, T, C = 3, 6, 8, 7
    symbols = torch.randint(1, C, (B, S), generator=gen)
    boundary = torch.tensor([[0, 0, 6, 8], [0, 0, 3, 5], [0, 0, 0, 7]])
    logits = torch.randn(B, T, S + 1, C, dtype=torch.float64, generator=gen, requires_grad=True)
    full = rnnt_loss(logits, symbols, BLANK, boundary, rnnt_type, reduction="none")
    ranges = torch.arange(S + 1).expand(B, T, S + 1)
    pruned = rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary, rnnt_type, reduction="none")
    torch.testing.assert_close(pruned, full)
    (full_grad,) = torch.autograd.grad(full.sum(), logits)
    (pruned_grad,) = torch.autograd.grad(pruned.sum(), logits)
    torch.testing.assert_close(pruned_grad, full_grad)
    # get_rnnt_prune_ranges caps s_range at S + 1 and then keeps every position.
    lm = torch.randn(B, S + 1, C, dtype=torch.float64, generator=gen)
    am = torch.randn(B, T, C, dtype=torch.float64, generator=gen)
    _, grads = rnnt_loss_simple(lm, am, symbols, BLANK, boundary, rnnt_type, return_grad=True)
    assert torch.equal(get_rnnt_prune_ranges(*grads, boundary, s_range=S + 3), ranges)


def test_blank_occupation_of_every_frame_sums_to_one() -> None:
    gen = torch.Generator().manual_seed(15)
    B, S, T, C = 3, 5, 9, 6
    symbols = torch.randint(1, C, (B, S), generator=gen)
    boundary = torch.tensor([[0, 0, 5, 9], [0, 0, 2, 6], [0, 0, 0, 3]])
    lm = torch.randn(B, S + 1, C, generator=gen)
    am = torch.randn(B, T, C, generator=gen)
    for loss_fn in (rnnt_loss_simple, rnnt_loss_smoothed):
        _, (px_grad, py_grad) = loss_fn(
            lm=lm, am=am, symbols=symbols, termination_symbol=BLANK, boundary=boundary,
            return_grad=True,
        )  # fmt: skip
        per_frame = py_grad.sum(dim=1)  # (B, T)
        for b, num_frames in enumerate(boundary[:, 3].tolist()):
            torch.testing.assert_close(per_frame[b, :num_frames], torch.ones(num_frames))
            assert per_frame[b, num_frames:].abs().sum() == 0
        symbols_per_utt = px_grad.sum(dim=(1, 2))
        torch.testing.assert_close(symbols_per_utt, boundary[:, 2].float())


def test_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(16)
    B, S, T, C = 2, 3, 4, 5
    symbols = torch.randint(1, C, (B, S), generator=gen)
    boundary = torch.tensor([[0, 0, 3, 4], [0, 0, 2, 3]])
    lm = torch.randn(B, S + 1, C, dtype=torch.float64, generator=gen, requires_grad=True)
    am = torch.randn(B, T, C, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda lm, am: rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.25, 0.1, boundary), (lm, am)
    )
    logits = torch.randn(B, T, 2, C, dtype=torch.float64, generator=gen, requires_grad=True)
    ranges = torch.tensor([0, 0, 1, 2]).view(1, T, 1).expand(B, T, 1) + torch.arange(2)
    for hat in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, hat=hat: rnnt_loss_pruned(
                x, symbols, ranges, BLANK, boundary, reduction="sum", use_hat_loss=hat
            ),
            (logits,),
        )


def test_reductions_and_return_grad_shapes() -> None:
    gen = torch.Generator().manual_seed(17)
    B, S, T, C = 3, 2, 4, 5
    symbols = torch.randint(1, C, (B, S), generator=gen)
    lm = torch.randn(B, S + 1, C, generator=gen)
    am = torch.randn(B, T, C, generator=gen)
    per_utt = rnnt_loss_simple(lm, am, symbols, BLANK, reduction="none")
    assert per_utt.shape == (B,)
    torch.testing.assert_close(rnnt_loss_simple(lm, am, symbols, BLANK), per_utt.mean())
    torch.testing.assert_close(
        rnnt_loss_simple(lm, am, symbols, BLANK, reduction="sum"), per_utt.sum()
    )
    loss, (px_grad, py_grad) = rnnt_loss_simple(lm, am, symbols, BLANK, return_grad=True)
    assert px_grad.shape == (B, S, T + 1) and py_grad.shape == (B, S + 1, T)
    loss, (px_grad, _) = rnnt_loss_simple(
        lm, am, symbols, BLANK, rnnt_type="modified", return_grad=True
    )
    assert px_grad.shape == (B, S, T)
    with pytest.raises(ValueError, match="reduction"):
        rnnt_loss_simple(lm, am, symbols, BLANK, reduction="avg")
    with pytest.raises(ValueError, match="rnnt_type"):
        rnnt_loss_simple(lm, am, symbols, BLANK, rnnt_type="hybrid")


def test_zero_symbols() -> None:
    gen = torch.Generator().manual_seed(18)
    B, T, C = 2, 4, 5
    am = torch.randn(B, T, C, dtype=torch.float64, generator=gen)
    lm = torch.randn(B, 1, C, dtype=torch.float64, generator=gen)
    symbols = torch.zeros(B, 0, dtype=torch.int64)
    losses = rnnt_loss_simple(lm, am, symbols, BLANK, reduction="none")
    blank_only = torch.log_softmax(lm + am, dim=-1)[:, :, BLANK].sum(dim=1)
    torch.testing.assert_close(losses, -blank_only)
    logits = torch.randn(B, T, 1, C, dtype=torch.float64, generator=gen)
    ranges = torch.zeros(B, T, 1, dtype=torch.int64)
    pruned = rnnt_loss_pruned(logits, symbols, ranges, BLANK, reduction="none")
    torch.testing.assert_close(
        pruned, -torch.log_softmax(logits, dim=-1)[:, :, 0, BLANK].sum(dim=1)
    )


def test_padding_beyond_boundary_does_not_matter() -> None:
    gen = torch.Generator().manual_seed(19)
    B, S, T, C = 2, 4, 7, 6
    symbols = torch.randint(1, C, (B, S), generator=gen)
    boundary = torch.tensor([[0, 0, 2, 4], [0, 0, 4, 7]])
    lm = torch.randn(B, S + 1, C, generator=gen, requires_grad=True)
    am = torch.randn(B, T, C, generator=gen, requires_grad=True)
    loss = rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.25, 0.0, boundary, reduction="none")
    (am_grad,) = torch.autograd.grad(loss[0], am)
    padded_symbols = symbols.clone()
    padded_symbols[0, 2:] = C - 1
    padded_am = am.detach().clone()
    padded_am[0, 4:] = 50.0
    padded_am.requires_grad_(True)
    padded_lm = lm.detach().clone()
    padded_lm[0, 3:] = -30.0  # changes the unigram LM of the AM-only part, so use am_only=0
    padded = rnnt_loss_smoothed(
        padded_lm, padded_am, padded_symbols, BLANK, 0.25, 0.0, boundary, reduction="none"
    )
    torch.testing.assert_close(padded[0], loss[0])
    (padded_grad,) = torch.autograd.grad(padded[0], padded_am)
    torch.testing.assert_close(padded_grad[0, :4], am_grad[0, :4])
    assert padded_grad[0, 4:].abs().sum() == 0


def test_more_symbols_than_frames(caplog: pytest.LogCaptureFixture) -> None:
    gen = torch.Generator().manual_seed(20)
    B, S, T, C = 2, 9, 4, 6
    symbols = torch.randint(1, C, (B, S), generator=gen)
    boundary = torch.tensor([[0, 0, 9, 4], [0, 0, 2, 4]])
    lm = torch.randn(B, S + 1, C, generator=gen)
    am = torch.randn(B, T, C, generator=gen)
    # Regular: allowed; the prune range grows so that 9 symbols fit in 4 frames.
    loss, grads = rnnt_loss_smoothed(
        lm, am, symbols, BLANK, 0.25, 0.0, boundary, reduction="none", return_grad=True
    )
    assert torch.isfinite(loss).all()
    with caplog.at_level(logging.WARNING):
        ranges = get_rnnt_prune_ranges(*grads, boundary, s_range=2)
    assert "s_range" in caplog.text
    assert ranges.shape[2] == (9 - 1) // 4 + 2
    logits = torch.randn(B, T, ranges.shape[2], C, generator=gen)
    pruned = rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary, reduction="none")
    assert torch.isfinite(pruned).all()
    # Modified: at most one symbol per frame, so utterance 0 is an error that names it.
    with pytest.raises(ValueError, match="utterance 0 has 9 symbols and only 4 frames"):
        rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.25, 0.0, boundary, rnnt_type="modified")


def test_impossible_alignment_gives_inf_and_zero_grads() -> None:
    gen = torch.Generator().manual_seed(21)
    B, S, T, C = 2, 3, 4, 5
    symbols = torch.randint(1, C, (B, S), generator=gen)
    boundary = torch.tensor([[0, 0, 3, 0], [0, 0, 3, 4]])  # utterance 0: symbols, no frame
    logits = torch.randn(B, T, S + 1, C, generator=gen, requires_grad=True)
    loss = rnnt_loss(logits, symbols, BLANK, boundary, reduction="none")
    assert loss[0].item() == math.inf and torch.isfinite(loss[1])
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(grad).all()
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() > 0
    # A pruned lattice whose ranges never reach the last symbols is impossible too.
    ranges = torch.zeros(B, T, 2, dtype=torch.int64) + torch.arange(2)
    pruned_logits = torch.randn(B, T, 2, C, generator=gen, requires_grad=True)
    pruned = rnnt_loss_pruned(pruned_logits, symbols, ranges, BLANK, reduction="none")
    assert torch.isinf(pruned).all()
    (grad,) = torch.autograd.grad(pruned.sum(), pruned_logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() == 0


def test_prune_ranges_are_valid() -> None:
    gen = torch.Generator().manual_seed(22)
    B, S, T, C = 4, 12, 20, 8
    symbols = torch.randint(1, C, (B, S), generator=gen)
    boundary = torch.tensor([[0, 0, 12, 20], [0, 0, 7, 15], [0, 0, 0, 9], [0, 0, 12, 13]])
    lm = torch.randn(B, S + 1, C, generator=gen)
    am = torch.randn(B, T, C, generator=gen)
    _, grads = rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.25, 0.0, boundary, return_grad=True)
    s_range = 4
    ranges = get_rnnt_prune_ranges(*grads, boundary, s_range)
    assert ranges.shape == (B, T, s_range) and ranges.dtype == torch.int64
    begin = ranges[:, :, 0]
    assert (begin[:, 0] == 0).all()
    steps = begin[:, 1:] - begin[:, :-1]
    assert (steps >= 0).all() and (steps < s_range).all()
    assert (ranges[:, :, -1] <= S).all()
    for b, (_, _, num_symbols, num_frames) in enumerate(boundary.tolist()):
        assert begin[b, num_frames - 1] == max(num_symbols - s_range + 1, 0)
    logits = torch.randn(B, T, s_range, C, generator=gen)
    assert torch.isfinite(rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary)).all()


def test_do_rnnt_pruning_gathers_the_ranges() -> None:
    gen = torch.Generator().manual_seed(23)
    B, S, T, R = 2, 5, 3, 2
    am = torch.randn(B, T, 4, generator=gen)
    lm = torch.randn(B, S + 1, 3, generator=gen)
    ranges = torch.tensor([[0, 1, 3], [2, 2, 4]]).unsqueeze(2) + torch.arange(R)
    am_pruned, lm_pruned = do_rnnt_pruning(am, lm, ranges)
    assert am_pruned.shape == (B, T, R, 4) and lm_pruned.shape == (B, T, R, 3)
    for b, t, r in itertools.product(range(B), range(T), range(R)):
        assert torch.equal(am_pruned[b, t, r], am[b, t])
        assert torch.equal(lm_pruned[b, t, r], lm[b, ranges[b, t, r]])


def test_roll_by_shifts() -> None:
    src = torch.arange(15).reshape(1, 3, 5)
    rolled = _roll_by_shifts(src, torch.tensor([[1, 2, 3]]))
    expected = torch.stack([torch.roll(src[0, i], shifts=i + 1) for i in range(3)]).unsqueeze(0)
    assert torch.equal(rolled, expected)


def _cuda_inputs(device: Optional[str]):
    gen = torch.Generator().manual_seed(24)
    B, S, T, C = 3, 7, 11, 9
    symbols = torch.randint(1, C, (B, S), generator=gen)
    boundary = torch.tensor([[0, 0, 7, 11], [0, 0, 4, 9], [0, 0, 0, 5]])
    lm = torch.randn(B, S + 1, C, generator=gen)
    am = torch.randn(B, T, C, generator=gen)
    logits = torch.randn(B, T, 3, C, generator=gen)
    tensors = [symbols, boundary, lm, am, logits]
    return [x.to(device) for x in tensors] if device else tensors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    results = []
    for device in (None, "cuda"):
        symbols, boundary, lm, am, logits = _cuda_inputs(device)
        lm.requires_grad_(True)
        simple, grads = rnnt_loss_smoothed(
            lm, am, symbols, BLANK, 0.25, 0.0, boundary, reduction="none", return_grad=True
        )
        ranges = get_rnnt_prune_ranges(*grads, boundary, 3)
        pruned = rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary, reduction="none")
        (lm_grad,) = torch.autograd.grad(simple.sum(), lm)
        results.append([x.cpu() for x in (simple, ranges, pruned, lm_grad)])
    for cpu, gpu in zip(*results):
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
