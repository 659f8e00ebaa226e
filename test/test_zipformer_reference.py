"""Zipformer v1 streaming encoder against icefall's reference tensors.

Reference data: test/data/zipformer_v1 (README there): state_dict layouts of the default and
tiny models, the tiny model's weights, its simulated-streaming forward (a) and its real
streaming run (b), each with per-module intermediates (``mid.*``). Tolerance, as the README
suggests: |mine - ref| <= 1e-5 * max(1, max|ref|) per tensor, with 1 intra-op thread.
"""

import json
import random
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs/librispeech/ASR/pruned_transducer_stateless7_streaming"
DATA = REPO / "test/data/zipformer_v1"
if str(RECIPE) not in sys.path:
    sys.path.insert(0, str(RECIPE))

from scaling_converter import convert_scaled_to_non_scaled  # noqa: E402
from zipformer import STATE_NAMES, Zipformer, stack_states  # noqa: E402

NUM_STACKS = 5
STATE_KEYS = [f"{name}_{i}" for name in STATE_NAMES for i in range(NUM_STACKS)]

TINY_CONFIG = dict(
    encoder_dims=(48,) * 5,
    attention_dim=(32,) * 5,
    encoder_unmasked_dims=(32,) * 5,
    nhead=(2,) * 5,
    feedforward_dim=(96,) * 5,
    num_encoder_layers=(1,) * 5,
)
DEFAULT_CONFIG = dict(
    encoder_dims=(384,) * 5,
    attention_dim=(192,) * 5,
    encoder_unmasked_dims=(256,) * 5,
    nhead=(8,) * 5,
    feedforward_dim=(1024, 1024, 2048, 2048, 1024),
    num_encoder_layers=(2, 4, 3, 2, 4),
)


def build_encoder(config: Dict) -> Zipformer:
    """The encoder that icefall's get_encoder_model builds for these model flags."""
    return Zipformer(
        num_features=80,
        output_downsampling_factor=2,
        zipformer_downsampling_factors=(1, 2, 4, 8, 2),
        cnn_module_kernels=(31,) * 5,
        num_left_chunks=4,
        short_chunk_size=50,
        decode_chunk_size=16,
        **config,
    )


@pytest.fixture(autouse=True)
def one_thread():
    """The reference was computed with 1 intra-op thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_encoder() -> Zipformer:
    """The tiny encoder with the reference weights, in eval mode."""
    encoder = build_encoder(TINY_CONFIG)
    weights = load_file(str(DATA / "tiny_state_dict.safetensors"))
    prefix = "encoder."
    encoder.load_state_dict(
        {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True
    )
    return encoder.eval()


def assert_close(mine: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    assert mine.shape == ref.shape, f"{name}: shape {tuple(mine.shape)} != {tuple(ref.shape)}"
    assert mine.dtype == ref.dtype, f"{name}: dtype {mine.dtype} != {ref.dtype}"
    if ref.dtype in (torch.int64, torch.bool):
        assert torch.equal(mine, ref), f"{name}: {mine} != {ref}"
        return
    tolerance = 1e-5 * max(1.0, ref.abs().max().item())
    diff = (mine - ref).abs().max().item()
    assert diff <= tolerance, f"{name}: max abs diff {diff:.3g} > {tolerance:.3g}"


def expected_encoder_keys(file_name: str) -> List[List]:
    entries = json.loads((DATA / file_name).read_text())["entries"]
    prefix = "encoder."
    return [[name[len(prefix) :], shape] for name, shape, _ in entries if name.startswith(prefix)]


def test_default_state_dict_names_order_and_shapes():
    with torch.device("meta"):
        encoder = build_encoder(DEFAULT_CONFIG)
    mine = [[name, list(t.shape)] for name, t in encoder.state_dict().items()]
    assert mine == expected_encoder_keys("default_state_dict_keys.json")
    info = json.loads((DATA / "default_state_dict_keys.json").read_text())
    assert sum(p.numel() for p in encoder.parameters()) == info["num_parameters_encoder"]


def test_tiny_state_dict_names_order_and_shapes(tiny_encoder):
    mine = [[name, list(t.shape)] for name, t in tiny_encoder.state_dict().items()]
    assert mine == expected_encoder_keys("tiny_state_dict_keys.json")
    buffers = {name for name, _ in tiny_encoder.named_buffers()}
    assert buffers and all(name.endswith(".count") for name in buffers)


def record_forward_outputs(encoder: Zipformer, names: List[str]) -> Dict[str, torch.Tensor]:
    """Register forward hooks storing the output of each named module (first element of a
    tuple output). Returns the dict that will be filled."""
    modules = dict(encoder.named_modules())
    recorded: Dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable:
        def store(module, inputs, output):
            recorded[name] = output[0] if isinstance(output, tuple) else output

        return store

    for name in names:
        modules[name].register_forward_hook(hook(name))
    return recorded


def test_simulated_streaming_forward_and_intermediates():
    encoder = build_encoder(TINY_CONFIG)
    weights = load_file(str(DATA / "tiny_state_dict.safetensors"))
    encoder.load_state_dict({k[8:]: v for k, v in weights.items() if k.startswith("encoder.")})
    encoder.eval()
    ref = load_file(str(DATA / "tiny_encoder_simulated.safetensors"))
    probes = [key[len("mid.") :] for key in ref if key.startswith("mid.")]
    assert len(probes) == 17
    recorded = record_forward_outputs(encoder, probes)

    with torch.no_grad():
        out, out_lens = encoder(ref["x"], ref["x_lens"])
    assert_close(out, ref["encoder_out"], "encoder_out")
    assert_close(out_lens, ref["encoder_out_lens"], "encoder_out_lens")
    for name in probes:
        assert_close(recorded[name], ref[f"mid.{name}"], f"mid.{name}")

    with torch.no_grad():
        out, out_lens = encoder(ref["aligned.x"], ref["aligned.x_lens"])
    assert_close(out, ref["aligned.encoder_out"], "aligned.encoder_out")
    assert_close(out_lens, ref["aligned.encoder_out_lens"], "aligned.encoder_out_lens")


def record_streaming_outputs(encoder: Zipformer) -> Dict[str, torch.Tensor]:
    """Capture the probes of the streaming reference: forward hooks for modules called
    through forward(), wrapped ``streaming_forward`` for stacks and layers."""
    recorded = record_forward_outputs(
        encoder,
        ["encoder_embed", "skip_modules.4", "downsample_output"]
        + [f"encoders.{i}.downsample" for i in range(1, NUM_STACKS)],
    )
    modules = dict(encoder.named_modules())

    def wrap(name: str) -> None:
        module = modules[name]
        original = module.streaming_forward

        def streaming_forward(*args, **kwargs):
            result = original(*args, **kwargs)
            recorded[name] = result[0]
            return result

        module.streaming_forward = streaming_forward

    for i in range(NUM_STACKS):
        wrap(f"encoders.{i}")
        wrap("encoders.0.layers.0" if i == 0 else f"encoders.{i}.encoder.layers.0")
    return recorded


def run_streaming_against_reference(encoder: Zipformer, check_probes: bool) -> int:
    """Feed every reference chunk, chaining this encoder's own states from the reference
    initial states, and compare outputs, states (and probes). Returns the number of chunks."""
    ref = load_file(str(DATA / "tiny_encoder_streaming.safetensors"))
    recorded = record_streaming_outputs(encoder) if check_probes else {}
    states = [ref[f"init_state.{key}"] for key in STATE_KEYS]
    chunk = 0
    while f"chunk{chunk}.x" in ref:
        prefix = f"chunk{chunk}."
        with torch.no_grad():
            out, out_lens, states = encoder.streaming_forward(
                ref[prefix + "x"], ref[prefix + "x_lens"], states
            )
        assert_close(out, ref[prefix + "encoder_out"], prefix + "encoder_out")
        assert_close(out_lens, ref[prefix + "encoder_out_lens"], prefix + "encoder_out_lens")
        assert len(states) == len(STATE_KEYS)
        for key, state in zip(STATE_KEYS, states):
            assert_close(state, ref[f"{prefix}new_state.{key}"], f"{prefix}new_state.{key}")
        if check_probes:
            probe_keys = [k for k in ref if k.startswith(prefix + "mid.")]
            assert len(probe_keys) == 17
            for key in probe_keys:
                assert_close(recorded[key[len(prefix + "mid.") :]], ref[key], key)
        chunk += 1
    return chunk


def test_initial_states_match_reference(tiny_encoder):
    ref = load_file(str(DATA / "tiny_encoder_streaming.safetensors"))
    states = stack_states([tiny_encoder.get_init_state(), tiny_encoder.get_init_state()])
    for key, state in zip(STATE_KEYS, states, strict=True):
        assert_close(state, ref[f"init_state.{key}"], f"init_state.{key}")


def test_real_streaming_chunks_states_and_intermediates():
    encoder = build_encoder(TINY_CONFIG)
    weights = load_file(str(DATA / "tiny_state_dict.safetensors"))
    encoder.load_state_dict({k[8:]: v for k, v in weights.items() if k.startswith("encoder.")})
    assert run_streaming_against_reference(encoder.eval(), check_probes=True) == 7


def test_export_conversion_keeps_streaming_outputs(tiny_encoder):
    converted = convert_scaled_to_non_scaled(tiny_encoder, inplace=False)
    assert not any(name.endswith(".count") for name in converted.state_dict())
    assert any(name.endswith(".count") for name in tiny_encoder.state_dict())
    assert run_streaming_against_reference(converted, check_probes=False) == 7


def test_tracing_branches_keep_streaming_outputs(tiny_encoder, monkeypatch):
    """torch.onnx.export traces the encoder, taking every is_tracing() branch (gather-based
    relative shift, plain softmax and DoubleSwish)."""
    converted = convert_scaled_to_non_scaled(tiny_encoder, inplace=False)
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    assert run_streaming_against_reference(converted, check_probes=False) == 7


def test_initialisation_reproduces_reference_weights():
    """The reference weights are icefall's initialisation (random.seed(0), torch.manual_seed(0))
    plus 0.05 * randn from a generator seeded 1234, drawn in state_dict order (encoder first).
    The same construction here must give the same encoder weights."""
    python_state = random.getstate()
    with torch.random.fork_rng():
        random.seed(0)
        torch.manual_seed(0)
        encoder = build_encoder(TINY_CONFIG)
    random.setstate(python_state)
    generator = torch.Generator().manual_seed(1234)
    weights = load_file(str(DATA / "tiny_state_dict.safetensors"))
    for name, value in encoder.state_dict().items():
        if value.is_floating_point():
            value = value + 0.05 * torch.randn(value.shape, generator=generator)
        assert_close(value, weights[f"encoder.{name}"], name)
