"""Zipformer v1 encoder: TorchScript, state batching, masks and the training path."""

import sys
from pathlib import Path
from typing import List

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs/librispeech/ASR/pruned_transducer_stateless7_streaming"
DATA = REPO / "test/data/zipformer_v1"
if str(RECIPE) not in sys.path:
    sys.path.insert(0, str(RECIPE))

from scaling import (  # noqa: E402
    ActivationBalancer,
    DoubleSwish,
    Whiten,
    set_batch_count,
)
from scaling_converter import convert_scaled_to_non_scaled  # noqa: E402
from zipformer import (  # noqa: E402
    Zipformer,
    make_chunk_attention_mask,
    stack_states,
    unstack_states,
)

from icefall.utils import subsequent_chunk_mask  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


def tiny_encoder(load_weights: bool = True) -> Zipformer:
    """The reference tiny encoder (README of test/data/zipformer_v1), eval mode."""
    encoder = Zipformer(
        num_features=80,
        encoder_dims=(48,) * 5,
        attention_dim=(32,) * 5,
        encoder_unmasked_dims=(32,) * 5,
        zipformer_downsampling_factors=(1, 2, 4, 8, 2),
        nhead=(2,) * 5,
        feedforward_dim=(96,) * 5,
        num_encoder_layers=(1,) * 5,
        cnn_module_kernels=(31,) * 5,
        decode_chunk_size=16,
    )
    if load_weights:
        weights = load_file(str(DATA / "tiny_state_dict.safetensors"))
        encoder.load_state_dict(
            {k[8:]: v for k, v in weights.items() if k.startswith("encoder.")}, strict=True
        )
    return encoder.eval()


def two_layer_encoder() -> Zipformer:
    """A small encoder with 2 layers per stack and unequal dims (exercises extra_proj)."""
    return Zipformer(
        num_features=80,
        encoder_dims=(32, 32, 48, 48, 48),
        attention_dim=(16,) * 5,
        encoder_unmasked_dims=(24,) * 5,
        zipformer_downsampling_factors=(1, 2, 4, 8, 2),
        nhead=(2,) * 5,
        feedforward_dim=(64,) * 5,
        num_encoder_layers=(2,) * 5,
        cnn_module_kernels=(7,) * 5,
        decode_chunk_size=8,
    )


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_chunks(encoder, x: torch.Tensor, states: List[torch.Tensor], chunk_len: int = 32):
    """Stream x (N, T, 80) in chunks of chunk_len + 7 frames. Returns (outputs, states)."""
    outputs = []
    start = 0
    while start + chunk_len + 7 <= x.size(1):
        chunk = x[:, start : start + chunk_len + 7]
        lens = torch.full((x.size(0),), chunk.size(1), dtype=torch.int64)
        out, _, states = encoder.streaming_forward(chunk, lens, states)
        outputs.append(out)
        start += chunk_len
    return torch.cat(outputs, dim=1), states


def test_scripted_encoder_matches_eager():
    encoder = tiny_encoder()
    scripted = torch.jit.script(encoder)
    ref = load_file(str(DATA / "tiny_encoder_simulated.safetensors"))
    with torch.no_grad():
        eager_out, eager_lens = encoder(ref["x"], ref["x_lens"])
        script_out, script_lens = scripted(ref["x"], ref["x_lens"])
        assert torch.equal(script_lens, eager_lens)
        assert torch.allclose(script_out, eager_out, atol=1e-6)

        states = stack_states([scripted.get_init_state(torch.device("cpu"))] * 2)
        eager_stream, eager_states = run_chunks(encoder, ref["aligned.x"], states)
        script_stream, script_states = run_chunks(scripted, ref["aligned.x"], states)
    assert torch.allclose(script_stream, eager_stream, atol=1e-6)
    for a, b in zip(script_states, eager_states, strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_export_style_scripting_with_streaming_forward_as_forward():
    """export.py --jit 1: forward becomes streaming_forward, the full-utterance forward stays
    reachable as non_streaming_forward, after convert_scaled_to_non_scaled."""
    encoder = convert_scaled_to_non_scaled(tiny_encoder(), inplace=True)

    class StreamingZipformer(Zipformer):
        non_streaming_forward = torch.jit.export(Zipformer.forward)
        forward = Zipformer.streaming_forward

    encoder.__class__ = StreamingZipformer
    scripted = torch.jit.script(encoder)
    x = torch.randn(1, 39, 80)
    x_lens = torch.tensor([39])
    states = scripted.get_init_state(torch.device("cpu"))
    with torch.no_grad():
        out, out_lens, new_states = scripted(x, x_lens, states)
        expected, _, expected_states = Zipformer.streaming_forward(encoder, x, x_lens, states)
        full, full_lens = scripted.non_streaming_forward(x, x_lens)
    assert out.shape == (1, 8, 48) and out_lens.tolist() == [8]
    assert torch.allclose(out, expected, atol=1e-6)
    assert len(new_states) == len(expected_states) == 35
    assert full.shape == (1, 8, 48) and full_lens.tolist() == [8]


def test_stack_unstack_round_trip():
    encoder = two_layer_encoder()
    per_utterance = [[torch.randn_like(s.float()).to(s.dtype) for s in encoder.get_init_state()]]
    per_utterance += [[torch.randn_like(s.float()).to(s.dtype) for s in encoder.get_init_state()]]
    per_utterance += [[s + 1 for s in per_utterance[0]]]
    batched = stack_states(per_utterance)
    assert batched[0].shape == (2, 3)  # cached_len of stack 0: (layers, N)
    assert batched[2 * 5].shape == (2, 8 * 4, 3, 16)  # cached_key of stack 0
    unstacked = unstack_states(batched)
    assert len(unstacked) == 3
    for mine, original in zip(unstacked, per_utterance, strict=True):
        for a, b in zip(mine, original, strict=True):
            assert torch.equal(a, b)
    for a, b in zip(stack_states(unstacked), batched, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        stack_states([per_utterance[0][:-1]])


def test_streaming_batch_rows_are_independent():
    """A batch of two streams gives the same result as each stream alone."""
    torch.manual_seed(0)
    encoder = two_layer_encoder().eval()
    x = torch.randn(2, 16 * 3 + 7, 80)
    with torch.no_grad():
        batched_out, batched_states = run_chunks(
            encoder, x, stack_states([encoder.get_init_state()] * 2), chunk_len=16
        )
        for n in range(2):
            single_out, single_states = run_chunks(
                encoder, x[n : n + 1], encoder.get_init_state(), chunk_len=16
            )
            assert torch.allclose(batched_out[n : n + 1], single_out, atol=1e-5)
            for a, b in zip(unstack_states(batched_states)[n], single_states, strict=True):
                assert torch.allclose(a.float(), b.float(), atol=1e-4)


def test_streaming_rejects_wrong_number_of_states():
    encoder = two_layer_encoder().eval()
    states = encoder.get_init_state()[:-1]
    with pytest.raises(ValueError, match="state tensors"):
        encoder.streaming_forward(torch.randn(1, 23, 80), torch.tensor([23]), states)


@pytest.mark.parametrize("size,chunk,left", [(76, 16, 4), (38, 8, 4), (10, 3, -1), (5, 8, 0)])
def test_chunk_attention_mask_is_inverse_of_subsequent_chunk_mask(size, chunk, left):
    mine = make_chunk_attention_mask(size, chunk, left, torch.device("cpu"))
    assert torch.equal(mine, ~subsequent_chunk_mask(size, chunk, left))


def test_training_step_runs_and_gives_finite_gradients():
    torch.manual_seed(1)
    encoder = two_layer_encoder().train()
    set_batch_count(encoder, 500)
    assert encoder.encoders[1].encoder.layers[1].batch_count == 500
    x = torch.randn(3, 140, 80)
    x_lens = torch.tensor([140, 100, 60])
    for _ in range(3):
        out, out_lens = encoder(x, x_lens)
        assert out.shape == (3, 33, 48)
        assert out_lens.tolist() == [33, 23, 13]
        out.pow(2).mean().backward()
    # Layer drop, skip dropout and dynamic dropout leave some parameters without a gradient.
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert len(grads) > 0.5 * len(list(encoder.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    # A very short batch (fewer embedding frames than the largest downsampling factor).
    out, _ = encoder(torch.randn(2, 20, 80), torch.tensor([20, 18]))
    assert out.shape == (2, 3, 48)


def test_balancer_and_whiten_act_only_with_grad():
    balancer = ActivationBalancer(4, channel_dim=-1, min_prob=1.0).train()
    x = -torch.rand(50, 4) - 1.0  # all negative: violates min_positive
    with torch.no_grad():
        assert torch.equal(balancer(x), x)
    assert balancer.cpu_count == 0
    x.requires_grad_(True)
    balancer(x).sum().backward()
    assert balancer.cpu_count == 1
    assert not torch.allclose(x.grad, torch.ones_like(x))

    whiten = Whiten(num_groups=1, whitening_limit=1.0, prob=1.0, grad_scale=0.1)
    y = (torch.randn(100, 1) * torch.ones(1, 8) + 0.01 * torch.randn(100, 8)).requires_grad_()
    whiten(y).sum().backward()
    assert not torch.allclose(y.grad, torch.ones_like(y))
    with torch.no_grad():
        assert torch.equal(whiten(y), y)


def test_double_swish_forward_and_quantized_gradient():
    x = torch.linspace(-6, 6, 1001, requires_grad=True)
    y = DoubleSwish()(x)
    assert torch.allclose(y, x * torch.sigmoid(x - 1.0))
    y.sum().backward()
    exact = torch.autograd.functional.jacobian(lambda t: t * torch.sigmoid(t - 1.0), x).diagonal()
    step = (1.2 + 0.043637) / 255.0
    assert (x.grad - exact).abs().max() <= step + 1e-6


def test_degenerate_inputs():
    encoder = two_layer_encoder().eval()
    with pytest.raises(ValueError, match="at least 9 input frames"):
        encoder(torch.randn(1, 8, 80), torch.tensor([8]))
    # An utterance with no valid embedding frame gives finite outputs for the batch.
    with torch.no_grad():
        out, out_lens = encoder(torch.randn(2, 60, 80), torch.tensor([60, 7]))
    assert torch.isfinite(out).all()
    assert out_lens.tolist() == [13, 0]
