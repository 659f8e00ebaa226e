"""Decoder, joiner and simple projections of the streaming Zipformer recipe against icefall.

Reference tensors: test/data/zipformer_v1/tiny_decoder_joiner.safetensors (README section 3(c)),
weights: tiny_state_dict.safetensors (loaded with strict=True).
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs/librispeech/ASR/pruned_transducer_stateless7_streaming"
DATA = REPO / "test/data/zipformer_v1"
if str(RECIPE) not in sys.path:
    sys.path.insert(0, str(RECIPE))

from decoder import Decoder  # noqa: E402
from joiner import Joiner  # noqa: E402

VOCAB_SIZE = 50
ENCODER_DIM = 48
DECODER_DIM = 64
JOINER_DIM = 64
CONTEXT_SIZE = 2

TINY_MODEL_ARGS = [
    "--num-encoder-layers=1,1,1,1,1",
    "--feedforward-dims=96,96,96,96,96",
    "--nhead=2,2,2,2,2",
    "--encoder-dims=48,48,48,48,48",
    "--attention-dims=32,32,32,32,32",
    "--encoder-unmasked-dims=32,32,32,32,32",
    "--zipformer-downsampling-factors=1,2,4,8,2",
    "--cnn-module-kernels=31,31,31,31,31",
    "--decoder-dim=64",
    "--joiner-dim=64",
    "--context-size=2",
    "--short-chunk-size=50",
    "--num-left-chunks=4",
    "--decode-chunk-len=32",
]


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """|a - b| <= 1e-5 * max(1, max|ref|), the tolerance suggested by the reference README."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    tolerance = 1e-5 * max(1.0, expected.abs().max().item())
    max_diff = (actual - expected).abs().max().item()
    assert max_diff <= tolerance, f"max |diff| {max_diff:.3g} > {tolerance:.3g}"


@pytest.fixture(scope="module")
def reference() -> dict:
    return load_file(str(DATA / "tiny_decoder_joiner.safetensors"))


@pytest.fixture(scope="module")
def weights() -> dict:
    return load_file(str(DATA / "tiny_state_dict.safetensors"))


def submodule_state(weights: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def decoder(weights) -> Decoder:
    module = Decoder(VOCAB_SIZE, DECODER_DIM, blank_id=0, context_size=CONTEXT_SIZE)
    module.load_state_dict(submodule_state(weights, "decoder."), strict=True)
    return module.eval()


@pytest.fixture(scope="module")
def joiner(weights) -> Joiner:
    module = Joiner(ENCODER_DIM, DECODER_DIM, JOINER_DIM, VOCAB_SIZE)
    module.load_state_dict(submodule_state(weights, "joiner."), strict=True)
    return module.eval()


@torch.no_grad()
def test_decoder_context_call(decoder, reference):
    out = decoder(reference["decoder.y_ctx"], need_pad=False)
    assert_close_to_reference(out, reference["decoder.out_ctx"])


@torch.no_grad()
def test_decoder_negative_id_gives_zero_embedding(decoder):
    """Context [-1, 3] must equal token 3 after one frame of zero left padding."""
    out = decoder(torch.tensor([[-1, 3]]), need_pad=False)
    padded = decoder(torch.tensor([[3]]), need_pad=True)
    assert out.abs().sum() > 0
    assert torch.allclose(out, padded, atol=1e-6)


@torch.no_grad()
def test_decoder_training_call(decoder, reference):
    assert_close_to_reference(decoder(reference["decoder.y_seq"]), reference["decoder.out_seq"])


@torch.no_grad()
def test_decoder_torchscript_matches_eager(decoder, reference):
    scripted = torch.jit.script(decoder)
    y = reference["decoder.y_ctx"]
    assert torch.equal(scripted(y, need_pad=False), decoder(y, need_pad=False))


@torch.no_grad()
def test_joiner_projections(joiner, reference):
    assert_close_to_reference(
        joiner.encoder_proj(reference["joiner.encoder_out"]), reference["joiner.encoder_proj_out"]
    )
    assert_close_to_reference(
        joiner.decoder_proj(reference["joiner.decoder_out"]), reference["joiner.decoder_proj_out"]
    )


@torch.no_grad()
def test_joiner_2d_both_modes(joiner, reference):
    logits = joiner(reference["joiner.encoder_out"], reference["joiner.decoder_out"])
    assert_close_to_reference(logits, reference["joiner.logits_project"])
    logits = joiner(
        reference["joiner.encoder_proj_out"],
        reference["joiner.decoder_proj_out"],
        project_input=False,
    )
    assert_close_to_reference(logits, reference["joiner.logits_noproject"])


@torch.no_grad()
def test_joiner_4d_broadcast(joiner, reference):
    logits = joiner(reference["joiner4d.encoder_out"], reference["joiner4d.decoder_out"])
    assert_close_to_reference(logits, reference["joiner4d.logits"])


def test_joiner_rejects_3d_input(joiner):
    with pytest.raises(AssertionError):
        joiner(torch.zeros(2, 3, ENCODER_DIM), torch.zeros(2, 3, DECODER_DIM))


@torch.no_grad()
def test_simple_projections(weights, reference):
    am_proj = torch.nn.Linear(ENCODER_DIM, VOCAB_SIZE)
    lm_proj = torch.nn.Linear(DECODER_DIM, VOCAB_SIZE)
    am_proj.load_state_dict(submodule_state(weights, "simple_am_proj."), strict=True)
    lm_proj.load_state_dict(submodule_state(weights, "simple_lm_proj."), strict=True)
    assert_close_to_reference(
        am_proj(reference["simple_am_proj.input"]), reference["simple_am_proj.out"]
    )
    assert_close_to_reference(
        lm_proj(reference["simple_lm_proj.input"]), reference["simple_lm_proj.out"]
    )


def build_tiny_reference_model():
    """The whole tiny model through train.get_transducer_model, as the reference was built."""
    pytest.importorskip("zipformer")
    import train

    parser = train.get_parser()
    args = parser.parse_args(TINY_MODEL_ARGS)
    params = train.get_params()
    params.update(vars(args))
    params.vocab_size = VOCAB_SIZE
    params.blank_id = 0
    return train.get_transducer_model(params)


@torch.no_grad()
def test_whole_model_loads_strictly_and_matches(weights, reference):
    model = build_tiny_reference_model()
    keys = json.loads((DATA / "tiny_state_dict_keys.json").read_text())["entries"]
    assert [name for name, _, _ in keys] == list(model.state_dict().keys())
    model.load_state_dict(weights, strict=True)
    model.eval()
    out = model.decoder(reference["decoder.y_ctx"], need_pad=False)
    assert_close_to_reference(out, reference["decoder.out_ctx"])
    logits = model.joiner(reference["joiner4d.encoder_out"], reference["joiner4d.decoder_out"])
    assert_close_to_reference(logits, reference["joiner4d.logits"])
    assert_close_to_reference(
        model.simple_am_proj(reference["simple_am_proj.input"]), reference["simple_am_proj.out"]
    )
    assert_close_to_reference(
        model.simple_lm_proj(reference["simple_lm_proj.input"]), reference["simple_lm_proj.out"]
    )


def test_default_model_state_dict_matches_icefall():
    """Default hyper-parameters: same state_dict names, order and shapes as icefall."""
    pytest.importorskip("zipformer")
    import train

    params = train.get_params()
    params.update(vars(train.get_parser().parse_args([])))
    params.vocab_size = 500
    params.blank_id = 0
    model = train.get_transducer_model(params)
    reference = json.loads((DATA / "default_state_dict_keys.json").read_text())
    actual = [[name, list(t.shape)] for name, t in model.state_dict().items()]
    assert actual == [[name, shape] for name, shape, _ in reference["entries"]]
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"]
