"""End-to-end export: export.py (pretrained.pt, cpu_jit.pt), jit_trace_export.py,
export-onnx.py, and the transcripts of pretrained.py, jit_pretrained.py, jit_trace_pretrained.py
and sherpa-onnx on the same sound files.

The model is the tiny reference model (test/data/zipformer_v1) saved as ``epoch-1.pt``, with the
blank logit lowered so that the random-weight model emits tokens (garbage, but deterministic and
sensitive to every part of the network).
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs/librispeech/ASR/pruned_transducer_stateless7_streaming"
DATA = REPO / "test/data/zipformer_v1"
sys.path.insert(0, str(RECIPE))

from onnx_wrappers import encoder_state_names  # noqa: E402
from train import get_params, get_parser, get_transducer_model  # noqa: E402

from icefall.checkpoint import save_checkpoint  # noqa: E402
from icefall.decoding.greedy import greedy_search_batch  # noqa: E402
from icefall.export.jit import check_loads_without_toolkit  # noqa: E402
from icefall.export.sherpa_decode import run_sherpa_onnx  # noqa: E402
from icefall.export.streaming import chunked_encoder_forward, utterance_features  # noqa: E402

CONFIG = json.loads((DATA / "tiny_onnx_meta.json").read_text())["config"]
MODEL_FLAGS = [
    "--num-encoder-layers", "1,1,1,1,1", "--feedforward-dims", "96,96,96,96,96",
    "--nhead", "2,2,2,2,2", "--encoder-dims", "48,48,48,48,48",
    "--attention-dims", "32,32,32,32,32", "--encoder-unmasked-dims", "32,32,32,32,32",
    "--decoder-dim", "64", "--joiner-dim", "64",
]  # fmt: skip
CHECKPOINT_FLAGS = [
    "--epoch", "1", "--avg", "1", "--use-averaged-model", "0", "--exp-dir", "exp",
    "--tokens", "tokens.txt",
]  # fmt: skip
PIECES = ["<blk>", "<sos/eos>", "<unk>"] + [
    f"\u2581w{i}" if i % 3 else f"x{i}" for i in range(3, CONFIG["vocab_size"])
]


def build_model() -> torch.nn.Module:
    params = get_params()
    params.update(vars(get_parser().parse_args([])))
    params.update(CONFIG)
    model = get_transducer_model(params)
    model.load_state_dict(load_file(str(DATA / "tiny_state_dict.safetensors")), strict=True)
    with torch.no_grad():
        model.joiner.output_linear.bias[0] -= 3.0
    return model.eval()


def run_script(name: str, args: List[str], cwd: Path, check: bool = True):
    proc = subprocess.run(
        [sys.executable, str(RECIPE / name), *args], cwd=cwd, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def parse_transcripts(stdout: str) -> Dict[str, str]:
    """``path:\\ntext\\n\\n`` blocks -> {path: text}."""
    out = {}
    for block in stdout.strip().split("\n\n"):
        path, _, text = block.partition(":\n")
        out[path.strip()] = text.strip()
    return out


def write_audio(work: Path) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(2 * 16000) / 16000
    chirp = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)
    sf.write(work / "a.wav", chirp.astype(np.float32), 16000)
    t = np.arange(int(1.5 * 16000)) / 16000
    tone = 0.2 * np.sin(2 * np.pi * 300 * t * (1 + 0.5 * t)) + 0.05 * rng.standard_normal(t.size)
    stereo = np.stack([tone, 0.5 * tone], axis=1)
    sf.write(work / "b.flac", stereo.astype(np.float32), 16000)
    t = np.arange(3 * 8000) / 8000
    low = 0.3 * np.sin(2 * np.pi * 200 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)
    sf.write(work / "c.wav", low.astype(np.float32), 8000)
    (work / "bad.wav").write_text("not audio")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("export_e2e")
    (work / "exp").mkdir()
    save_checkpoint(work / "exp/epoch-1.pt", build_model())
    (work / "tokens.txt").write_text(
        "".join(f"{p} {i}\n" for i, p in enumerate(PIECES)), encoding="utf-8"
    )
    write_audio(work)
    run_script("export.py", CHECKPOINT_FLAGS + MODEL_FLAGS, work)
    run_script("export.py", CHECKPOINT_FLAGS + MODEL_FLAGS + ["--jit", "1"], work)
    run_script("jit_trace_export.py", CHECKPOINT_FLAGS + MODEL_FLAGS, work)
    run_script("export-onnx.py", CHECKPOINT_FLAGS + MODEL_FLAGS, work)
    return work


@pytest.fixture(scope="module")
def transcripts(work) -> Dict[str, Dict[str, str]]:
    files = ["a.wav", "b.flac", "c.wav"]
    pretrained = run_script(
        "pretrained.py",
        ["--checkpoint", "exp/pretrained.pt", "--tokens", "tokens.txt"] + MODEL_FLAGS + files,
        work,
    )
    jit = run_script(
        "jit_pretrained.py",
        ["--nn-model-filename", "exp/cpu_jit.pt", "--tokens", "tokens.txt"] + files,
        work,
    )
    traced = run_script(
        "jit_trace_pretrained.py",
        [
            "--encoder-model-filename", "exp/encoder_jit_trace.pt",
            "--decoder-model-filename", "exp/decoder_jit_trace.pt",
            "--joiner-model-filename", "exp/joiner_jit_trace.pt",
            "--tokens", "tokens.txt", *files,
        ],
        work,
    )  # fmt: skip
    return {
        "pretrained": parse_transcripts(pretrained.stdout),
        "jit": parse_transcripts(jit.stdout),
        "traced": parse_transcripts(traced.stdout),
    }


def test_pretrained_pt_holds_the_state_dict(work):
    checkpoint = torch.load(work / "exp/pretrained.pt", map_location="cpu", weights_only=False)
    assert set(checkpoint) == {"model"}
    build_model().load_state_dict(checkpoint["model"], strict=True)


def test_cpu_jit_loads_without_icefall_and_streams_like_the_reference(work):
    info = check_loads_without_toolkit(work / "exp/cpu_jit.pt")
    assert info["imported_forbidden"] == []
    assert {"forward", "get_init_state", "run_decoder", "run_joiner"} <= set(info["methods"])
    ref = load_file(str(DATA / "tiny_encoder_streaming.safetensors"))
    model = torch.jit.load(str(work / "exp/cpu_jit.pt"))
    names = encoder_state_names(5)
    states = [ref[f"init_state.{n}"] for n in names]
    with torch.no_grad():
        for c in range(7):  # chunk 6 is the short tail chunk (23 frames)
            out, lens, states = model(ref[f"chunk{c}.x"], ref[f"chunk{c}.x_lens"], states)
            expected = ref[f"chunk{c}.encoder_out"]
            assert (out - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())
            assert torch.equal(lens, ref[f"chunk{c}.encoder_out_lens"])
    assert model.decode_chunk_len == 32 and model.context_size == 2


def test_traced_encoder_streams_like_the_reference(work):
    ref = load_file(str(DATA / "tiny_encoder_streaming.safetensors"))
    encoder = torch.jit.load(str(work / "exp/encoder_jit_trace.pt"))
    states = [ref[f"init_state.{n}"] for n in encoder_state_names(5)]
    with torch.no_grad():
        for c in range(6):  # batch 2, while the trace was taken with batch 1
            out, _, states = encoder(ref[f"chunk{c}.x"], ref[f"chunk{c}.x_lens"], states)
            expected = ref[f"chunk{c}.encoder_out"]
            assert (out - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())


def test_jit_and_traced_transcripts_equal_pretrained(transcripts):
    pretrained = transcripts["pretrained"]
    assert set(pretrained) == {"a.wav", "b.flac", "c.wav"}
    assert all(len(text.split()) > 3 for text in pretrained.values()), pretrained
    assert transcripts["jit"] == pretrained
    assert transcripts["traced"] == pretrained


@pytest.mark.parametrize("method", ["modified_beam_search", "fast_beam_search", "beam_search"])
def test_pretrained_other_methods_and_unreadable_file(work, method):
    proc = run_script(
        "pretrained.py",
        ["--checkpoint", "exp/pretrained.pt", "--tokens", "tokens.txt", "--method", method]
        + MODEL_FLAGS
        + ["a.wav", "bad.wav"],
        work,
        check=False,
    )
    assert proc.returncode == 1
    assert "cannot read audio file bad.wav" in proc.stderr
    assert "1 of 2 files could not be read" in proc.stderr
    assert parse_transcripts(proc.stdout)["a.wav"]


def test_sherpa_onnx_decodes_like_pytorch(work, transcripts):
    """sherpa-onnx (child process) on the exported files vs our PyTorch streaming greedy search
    with sherpa's chunking: identical tokens on 16 kHz audio (8 kHz audio is resampled by two
    different resamplers, so it is only required to decode)."""
    onnx = {r: work / f"exp/{r}-epoch-1-avg-1.onnx" for r in ("encoder", "decoder", "joiner")}
    result = run_sherpa_onnx(
        onnx["encoder"], onnx["decoder"], onnx["joiner"], work / "tokens.txt",
        wav_files=[work / "a.wav", work / "b.flac", work / "c.wav"], num_streams=2,
    )  # fmt: skip
    model = build_model()
    model.unk_id = 2
    by_file = {Path(r["id"]).name: r for r in result["results"]}
    for name in ("a.wav", "b.flac"):
        samples, sample_rate = sf.read(work / name, dtype="float32", always_2d=True)
        with torch.no_grad():
            encoder_out = chunked_encoder_forward(
                utterance_features(samples.mean(axis=1), sample_rate),
                model.encoder.streaming_forward,
                model.encoder.get_init_state(),
                chunk_size=39,
                chunk_shift=32,
            )
            ids = greedy_search_batch(model, encoder_out, torch.tensor([encoder_out.size(1)]))[0]
        assert by_file[name]["tokens"] == [PIECES[i].replace("\u2581", " ") for i in ids]
        assert by_file[name]["text"] == transcripts["pretrained"][name]
    assert by_file["c.wav"]["tokens"]


def test_int8_model_loads_in_sherpa(work):
    onnx = {r: work / f"exp/{r}-epoch-1-avg-1.int8.onnx" for r in ("encoder", "decoder", "joiner")}
    result = run_sherpa_onnx(
        onnx["encoder"], onnx["decoder"], onnx["joiner"], work / "tokens.txt",
        wav_files=[work / "a.wav"],
    )  # fmt: skip
    assert result["results"][0]["tokens"]


def test_onnx_check_agrees_with_cpu_jit(work):
    onnx = [work / f"exp/{r}-epoch-1-avg-1.onnx" for r in ("encoder", "decoder", "joiner")]
    proc = run_script(
        "onnx_check.py",
        ["--jit-filename", "exp/cpu_jit.pt", "--onnx-encoder-filename", str(onnx[0]),
         "--onnx-decoder-filename", str(onnx[1]), "--onnx-joiner-filename", str(onnx[2]),
         "--num-chunks", "2"],
        work,
    )  # fmt: skip
    assert "ONNX and TorchScript agree" in proc.stderr


def test_onnx_pretrained_needs_no_torch_and_equals_pretrained(work, transcripts):
    """onnx_pretrained.py runs with ``torch`` made unimportable and gives pretrained.py's
    transcripts (same features, resampler, chunking and greedy search)."""
    onnx = [work / f"exp/{r}-epoch-1-avg-1.onnx" for r in ("encoder", "decoder", "joiner")]
    argv = [
        str(RECIPE / "onnx_pretrained.py"),
        "--encoder-model-filename", str(onnx[0]), "--decoder-model-filename", str(onnx[1]),
        "--joiner-model-filename", str(onnx[2]), "--tokens", "tokens.txt",
        "a.wav", "b.flac", "c.wav",
    ]  # fmt: skip
    code = (
        "import importlib.abc, runpy, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('onnx_pretrained.py must not import torch')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"sys.argv = {argv!r}\n"
        f"runpy.run_path({argv[0]!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert parse_transcripts(proc.stdout) == transcripts["pretrained"]


def test_deploy_benchmark_compares_sherpa_and_pytorch(work):
    """benchmarks/deploy.py on a two-utterance manifest: every field is there and sherpa-onnx's
    tokens equal our PyTorch model's when both see the same chunks."""
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    cuts = []
    for i, name in enumerate(["a.wav", "b.flac"]):
        recording = Recording.from_file(work / name, recording_id=f"rec{i}")
        supervision = SupervisionSegment(
            id=f"sup{i}", recording_id=recording.id, start=0, duration=recording.duration,
            text="W4 W5 HELLO",
        )  # fmt: skip
        cuts.append(
            MonoCut(
                id=f"cut{i}",
                start=0,
                duration=recording.duration,
                channel=0,
                recording=recording,
                supervisions=[supervision],
            )  # fmt: skip
        )
    CutSet.from_cuts(cuts).to_file(str(work / "deploy_cuts.jsonl.gz"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/deploy.py"), "--exp-dir", "exp",
         "--tokens", "tokens.txt", "--cuts", "deploy_cuts.jsonl.gz", *MODEL_FLAGS],
        cwd=work, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    result = report["test_sets"]["deploy_cuts"]
    assert result["num_utterances"] == 2
    assert result["identical_tokens_sherpa_vs_pytorch_sherpa_chunking"] == 1.0
    for decoder in ("sherpa_onnx", "sherpa_onnx_int8", "pytorch_streaming_decode"):
        assert result[decoder]["rtf"] > 0 and result[decoder]["wer"] >= 0
    assert report["rtf_ratio_pytorch_over_sherpa"] > 0
    assert report["pytorch_model"].endswith("(eager)")


def _constant_linear(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def test_checkpoint_selection_flags(tmp_path):
    """--epoch/--iter/--avg/--use-averaged-model select and average checkpoints as icefall."""
    from icefall.checkpoint import save_checkpoint_with_global_batch_idx
    from icefall.export.model_loading import load_model_weights

    for k in (1, 2, 3):
        params = {"batch_idx_train": 10 * k, "average_period": 10}
        running_mean = _constant_linear(sum(range(1, k + 1)) / k)
        save_checkpoint(tmp_path / f"epoch-{k}.pt", _constant_linear(k), running_mean, params)
        save_checkpoint_with_global_batch_idx(
            tmp_path, 10 * k, _constant_linear(10 * k), running_mean, params
        )

    def loaded(**flags) -> float:
        model = _constant_linear(0.0)
        load_model_weights(model, tmp_path, **flags)
        return model.weight[0, 0].item()

    assert loaded(epoch=3, avg=1) == 3.0
    assert loaded(epoch=3, avg=2) == 2.5
    assert loaded(epoch=3, avg=2, use_averaged_model=True) == pytest.approx(2.5)
    assert loaded(epoch=3, avg=1, use_averaged_model=True) == pytest.approx(3.0)
    assert loaded(epoch=0, iteration=30, avg=2) == 25.0
    assert loaded(epoch=0, iteration=20, avg=1, use_averaged_model=True) == pytest.approx(2.0)
    with pytest.raises(FileNotFoundError, match="epoch-5.pt"):
        loaded(epoch=5, avg=1)
    with pytest.raises(ValueError, match="--avg < --epoch"):
        loaded(epoch=3, avg=3, use_averaged_model=True)
