"""The sherpa-onnx contract checklist (icefall.export.sherpa_contract), the sherpa-onnx runner
and the Python re-implementation of sherpa's streaming loop, on a toy streaming ``zipformer``
transducer (1 stack, 7 states) exported here. The real recipe model is covered by
test_export.py / test_onnx_reference.py.

sherpa-onnx always runs in a child process: it ends the process on a bad model.
"""

import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
import torch.nn as nn

from icefall.export.onnx_meta import (
    add_meta_data,
    decoder_meta_data,
    read_meta_data,
    zipformer_streaming_meta_data,
)
from icefall.export.quantize import quantize_int8
from icefall.export.sherpa_contract import (
    SherpaOnnxContractError,
    check_sherpa_onnx_contract,
    zipformer_v1_state_specs,
)
from icefall.export.sherpa_decode import run_sherpa_onnx
from icefall.export.streaming_reference import OnnxStreamingTransducer, sherpa_fbank

VOCAB = ["<blk>", "<sos/eos>", "<unk>", "▁A", "▁B", "C", "D", "E", "F", "G"]
JOINER_DIM = 16
CONTEXT_SIZE = 2
META = zipformer_streaming_meta_data(
    encoder_dims=[8], attention_dims=[4], num_encoder_layers=[1], cnn_module_kernels=[3],
    left_context_len=[4], decode_chunk_len=32,
)  # fmt: skip
STATE_SPECS, _ = zipformer_v1_state_specs(META)


class ToyEncoder(nn.Module):
    """Takes every 4th of the first 32 frames; every state feeds the output and is updated."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(80, JOINER_DIM)

    def forward(self, x: torch.Tensor, states: List[torch.Tensor]):
        out = self.linear(x[:, :32:4])
        new_states = []
        for spec, state in zip(STATE_SPECS, states):
            per_row = state.movedim(spec.batch_axis, 0).reshape(state.size(spec.batch_axis), -1)
            if state.dtype == torch.int64:
                new_states.append(state + 8)
                out = out + 1e-3 * per_row.sum(1).float().view(-1, 1, 1)
            else:
                new_states.append(0.5 * state + 0.1)
                out = out + per_row.mean(1).view(-1, 1, 1)
        return out, new_states


class ToyDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(len(VOCAB), JOINER_DIM)
        self.conv = nn.Conv1d(JOINER_DIM, JOINER_DIM, CONTEXT_SIZE, groups=JOINER_DIM)
        self.proj = nn.Linear(JOINER_DIM, JOINER_DIM)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)
        return self.proj(torch.relu(self.conv(emb.permute(0, 2, 1)).squeeze(-1)))


class ToyJoiner(nn.Module):
    def __init__(self):
        super().__init__()
        self.output_linear = nn.Linear(JOINER_DIM, len(VOCAB))

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


def _zero_states(batch: int) -> List[torch.Tensor]:
    return [
        torch.zeros([batch if d < 0 else d for d in s.shape],
                    dtype=torch.int64 if s.name.startswith("cached_len") else torch.float32)
        for s in STATE_SPECS
    ]  # fmt: skip


def export_toy_model(out_dir: Path, static_batch: bool = False) -> Dict[str, Path]:
    """Exports the toy model as sherpa-onnx expects; returns paths by role."""
    torch.manual_seed(0)
    names = [s.name for s in STATE_SPECS]
    axes = {"x": {0: "N"}, "encoder_out": {0: "N"}}
    for s in STATE_SPECS:
        axes[s.name] = {s.batch_axis: "N"}
        axes[f"new_{s.name}"] = {s.batch_axis: "N"}
    paths = {r: out_dir / f"{r}.onnx" for r in ("encoder", "decoder", "joiner")}
    torch.onnx.export(
        ToyEncoder(), (torch.rand(1, 39, 80), _zero_states(1)), str(paths["encoder"]),
        input_names=["x"] + names, output_names=["encoder_out"] + [f"new_{n}" for n in names],
        dynamic_axes=None if static_batch else axes, opset_version=13, dynamo=False,
    )  # fmt: skip
    add_meta_data(paths["encoder"], META)
    torch.onnx.export(
        torch.jit.script(ToyDecoder()), (torch.zeros(3, CONTEXT_SIZE, dtype=torch.int64),),
        str(paths["decoder"]), input_names=["y"], output_names=["decoder_out"],
        dynamic_axes={"y": {0: "N"}, "decoder_out": {0: "N"}}, opset_version=13, dynamo=False,
    )  # fmt: skip
    add_meta_data(paths["decoder"], decoder_meta_data(CONTEXT_SIZE, len(VOCAB)))
    torch.onnx.export(
        ToyJoiner(), (torch.rand(3, JOINER_DIM), torch.rand(3, JOINER_DIM)), str(paths["joiner"]),
        input_names=["encoder_out", "decoder_out"], output_names=["logit"],
        dynamic_axes={"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}},
        opset_version=13, dynamo=False,
    )  # fmt: skip
    paths["tokens"] = out_dir / "tokens.txt"
    paths["tokens"].write_text("".join(f"{t} {i}\n" for i, t in enumerate(VOCAB)), "utf-8")
    return paths


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Dict[str, Path]:
    out_dir = tmp_path_factory.mktemp("toy_sherpa")
    paths = export_toy_model(out_dir)
    rng = np.random.default_rng(0)
    paths["wav_a"] = out_dir / "a.wav"
    paths["wav_b"] = out_dir / "b.wav"
    sf.write(paths["wav_a"], (0.1 * rng.standard_normal(32000)).astype(np.float32), 16000)
    sf.write(paths["wav_b"], (0.1 * rng.standard_normal(21000)).astype(np.float32), 16000)
    return paths


def _copy(paths: Dict[str, Path], dst: Path) -> Dict[str, Path]:
    dst.mkdir(parents=True, exist_ok=True)
    out = {}
    for role, path in paths.items():
        out[role] = dst / path.name
        shutil.copy(path, out[role])
    return out


def _check(paths: Dict[str, Path], **kwargs) -> List[str]:
    return check_sherpa_onnx_contract(
        paths["encoder"], paths["decoder"], paths["joiner"], paths.get("tokens"), **kwargs
    )


def test_toy_export_passes_contract(toy):
    assert _check(toy) == []


def test_missing_metadata_key_is_reported(toy, tmp_path):
    paths = _copy(toy, tmp_path)
    model = onnx.load(str(paths["encoder"]))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != "T"]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(paths["encoder"]))
    problems = _check(paths)
    assert any("'T'" in p and "missing" in p for p in problems), problems
    with pytest.raises(SherpaOnnxContractError, match="'T'"):
        _check(paths, raise_errors=True)


def test_bad_list_and_inconsistent_state_shape_are_reported(toy, tmp_path):
    paths = _copy(toy, tmp_path)
    add_meta_data(paths["encoder"], {"left_context_len": "8", "encoder_dims": "8, 8"})
    problems = _check(paths)
    assert any("encoder_dims" in p and "integer list" in p for p in problems), problems
    add_meta_data(paths["encoder"], {"encoder_dims": "8"})
    problems = _check(paths)
    assert any("cached_key_0" in p and "axis 1" in p for p in problems), problems


def test_static_batch_axis_is_reported(tmp_path):
    paths = export_toy_model(tmp_path, static_batch=True)
    problems = _check(paths, run_onnxruntime=False)
    assert any("'x'" in p and "static batch axis" in p for p in problems), problems
    assert any("cached_key_0" in p and "static batch axis" in p for p in problems), problems


def test_tokens_and_vocab_size_mismatch_is_reported(toy, tmp_path):
    paths = _copy(toy, tmp_path)
    paths["tokens"].write_text("".join(f"{t} {i}\n" for i, t in enumerate(VOCAB[:-1])), "utf-8")
    problems = _check(paths)
    assert any("tokens.txt" in p and "vocab_size is 10" in p for p in problems), problems
    add_meta_data(paths["decoder"], {"vocab_size": "9"})
    problems = _check(paths)
    assert any("joiner.onnx" in p and "'logit'" in p for p in problems), problems


def test_int8_quantisation_keeps_metadata_and_contract(toy, tmp_path):
    int8 = {"tokens": toy["tokens"]}
    for role, ops in (("encoder", ["MatMul"]), ("decoder", ["MatMul", "Gather"]),
                      ("joiner", ["MatMul"])):  # fmt: skip
        int8[role] = tmp_path / f"{role}.int8.onnx"
        quantize_int8(toy[role], int8[role], ops)
        original, quantised = read_meta_data(toy[role]), read_meta_data(int8[role])
        assert {k: quantised.get(k) for k in original} == original
    assert _check(int8) == []


def test_sherpa_decodes_like_the_python_reference_loop(toy):
    result = run_sherpa_onnx(
        toy["encoder"], toy["decoder"], toy["joiner"], toy["tokens"],
        wav_files=[toy["wav_a"], toy["wav_b"]], num_streams=2,
    )  # fmt: skip
    reference = OnnxStreamingTransducer(toy["encoder"], toy["decoder"], toy["joiner"])
    symbols = [t.replace("▁", " ") for t in VOCAB]
    for utt, wav in zip(result["results"], (toy["wav_a"], toy["wav_b"])):
        samples, sample_rate = sf.read(wav, dtype="float32")
        ids = reference.greedy_search(sherpa_fbank(samples, sample_rate), unk_id=2)
        assert len(ids) > 0
        assert utt["tokens"] == [symbols[i] for i in ids]
    assert result["rtf"] > 0


def test_sherpa_child_failure_is_an_exception_not_an_exit(toy, tmp_path):
    paths = _copy(toy, tmp_path)
    model = onnx.load(str(paths["decoder"]))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != "vocab_size"]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(paths["decoder"]))
    with pytest.raises(RuntimeError, match="exit code"):
        run_sherpa_onnx(
            paths["encoder"], paths["decoder"], paths["joiner"], paths["tokens"],
            wav_files=[paths["wav_a"]],
        )  # fmt: skip


def test_unreadable_audio_gives_a_clear_error(toy, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(RuntimeError, match="cannot read audio file"):
        run_sherpa_onnx(toy["encoder"], toy["decoder"], toy["joiner"], toy["tokens"],
                        wav_files=[bad])  # fmt: skip


def test_zipformer2_state_specs_follow_the_contract():
    from icefall.export.sherpa_contract import zipformer2_state_specs

    meta = {
        "encoder_dims": "192,256", "query_head_dims": "32,32", "value_head_dims": "12,12",
        "num_heads": "4,8", "num_encoder_layers": "2,1", "cnn_module_kernels": "31,15",
        "left_context_len": "128,64",
    }  # fmt: skip
    specs, problems = zipformer2_state_specs(meta)
    assert problems == []
    assert len(specs) == 6 * 3 + 2
    shapes = {s.name: (s.shape, s.batch_axis) for s in specs}
    assert shapes["cached_key_0"] == ([128, -1, 128], 1)
    assert shapes["cached_nonlin_attn_2"] == ([1, -1, 64, 192], 1)
    assert shapes["cached_val1_2"] == ([64, -1, 96], 1)
    assert shapes["cached_conv2_2"] == ([-1, 256, 7], 0)
    assert shapes["embed_states"] == ([-1, 128, 3, 19], 0)
    assert shapes["processed_lens"] == ([-1], 0)
    _, problems = zipformer2_state_specs({**meta, "num_encoder_layers": "0,0"})
    assert problems and "at least one encoder layer" in problems[0]


class ToyOfflineEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(80, JOINER_DIM)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor):
        return self.linear(x[:, ::4]), torch.div(x_lens + 3, 4, rounding_mode="floor")


def test_offline_encoder_checks(toy, tmp_path):
    encoder = tmp_path / "offline_encoder.onnx"
    torch.onnx.export(
        ToyOfflineEncoder(), (torch.rand(1, 100, 80), torch.tensor([100])), str(encoder),
        input_names=["x", "x_lens"], output_names=["encoder_out", "encoder_out_lens"],
        dynamic_axes={"x": {0: "N", 1: "T"}, "x_lens": {0: "N"},
                      "encoder_out": {0: "N", 1: "T"}, "encoder_out_lens": {0: "N"}},
        opset_version=13, dynamo=False,
    )  # fmt: skip
    paths = {**toy, "encoder": encoder}
    problems = _check(paths, streaming=False)
    assert any("model_type" in p for p in problems), problems
    add_meta_data(encoder, {"model_type": "zipformer2"})
    assert _check(paths, streaming=False) == []
