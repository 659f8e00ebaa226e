"""decode.py / streaming_decode.py: real streaming equals chunk-by-chunk streaming_forward,
stream batching does not change results, and the scripts run end to end on the ci corpus."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
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

import streaming_decode  # noqa: E402
import train  # noqa: E402
from zipformer import stack_states  # noqa: E402

from icefall.decoding import (  # noqa: E402
    fast_beam_search_one_best,
    greedy_search_batch,
    modified_beam_search,
    trivial_graph,
)
from icefall.utils import AttributeDict  # noqa: E402

LOG_EPS = math.log(1e-10)


def reference_model() -> torch.nn.Module:
    """The reference tiny Zipformer transducer (vocab 50) with its perturbed weights."""
    cli_args = json.loads((DATA / "tiny_info.json").read_text())["cli_args"]
    args = train.get_parser().parse_args(cli_args)
    params = train.get_params()
    params.update(vars(args))
    params.vocab_size, params.blank_id = 50, 0
    model = train.get_transducer_model(params)
    model.load_state_dict(load_file(str(DATA / "tiny_state_dict.safetensors")), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def model_and_features():
    torch.manual_seed(0)
    model = reference_model()
    features = {f"utt{i}": torch.randn(n, 80) for i, n in enumerate([100, 161, 75, 130])}
    return model, features


def chunk_by_chunk_encoder_out(model, features: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Encoder output of one utterance fed by hand through streaming_forward (README 3(b))."""
    padded = torch.nn.functional.pad(features, (0, 0, 0, 7 + chunk), value=LOG_EPS)
    states = stack_states([model.encoder.get_init_state()])
    outputs = []
    start = 0
    while start < padded.size(0):
        x = padded[start : start + chunk + 7]
        if x.size(0) < 23:
            x = torch.nn.functional.pad(x, (0, 0, 0, 23 - x.size(0)), value=LOG_EPS)
        out, out_lens, states = model.encoder.streaming_forward(
            x.unsqueeze(0), torch.tensor([x.size(0)]), states
        )
        outputs.append(out[0, : int(out_lens[0])])
        start += chunk
    return torch.cat(outputs)


def run_streaming(model, features, method: str, num_streams: int, graph=None) -> dict:
    params = AttributeDict(
        decoding_method=method,
        decode_chunk_len=32,
        num_decode_streams=num_streams,
        num_active_paths=4,
        beam=4.0,
        max_states=32,
        max_contexts=4,
    )
    streams = (
        streaming_decode.make_stream(params, model, cut_id, feats, graph)
        for cut_id, feats in features.items()
    )
    with torch.no_grad():
        finished = streaming_decode.decode_streams(params, model, streams)
    assert sorted(s.id for s in finished) == sorted(features)
    return {s.id: s.decoding_result() for s in finished}


@pytest.fixture(scope="module")
def offline_results(model_and_features):
    """Searches over the hand-fed chunk-by-chunk encoder output of every utterance."""
    model, features = model_and_features
    graph = trivial_graph(49)
    results = {"greedy_search": {}, "modified_beam_search": {}, "fast_beam_search": {}}
    with torch.no_grad():
        for cut_id, feats in features.items():
            enc = chunk_by_chunk_encoder_out(model, feats).unsqueeze(0)
            lens = torch.tensor([enc.size(1)])
            results["greedy_search"][cut_id] = greedy_search_batch(model, enc, lens)[0]
            results["modified_beam_search"][cut_id] = modified_beam_search(model, enc, lens, 4)[0]
            results["fast_beam_search"][cut_id] = fast_beam_search_one_best(
                model, graph, enc, lens, 4.0, 32, 4
            )[0]
    return results


@pytest.mark.parametrize("method", ["greedy_search", "modified_beam_search", "fast_beam_search"])
def test_streaming_equals_chunk_by_chunk_and_ignores_batching(
    model_and_features, offline_results, method
):
    model, features = model_and_features
    graph = trivial_graph(49) if method == "fast_beam_search" else None
    expected = offline_results[method]
    assert any(len(hyp) > 0 for hyp in expected.values())
    for num_streams in (1, 3, 10):
        assert run_streaming(model, features, method, num_streams, graph) == expected


# ------------------------------------------------------------------------------------------
# Scripts on the ci tiny corpus


def tiny_params(bpe_model: Path) -> AttributeDict:
    import sentencepiece as spm

    from icefall.data.datamodule import AsrDataModule

    parser = train.get_parser()
    AsrDataModule.add_arguments(parser)
    train.apply_corpus_defaults(parser, ["--corpus", "tiny"])
    params = train.get_params()
    params.update(vars(parser.parse_args(["--corpus", "tiny"])))
    sp = spm.SentencePieceProcessor()
    sp.load(str(bpe_model))
    params.vocab_size, params.blank_id = sp.get_piece_size(), sp.piece_to_id("<blk>")
    return params


@pytest.fixture(scope="module")
def tiny_exp(tiny_ci_dir, tmp_path_factory) -> Path:
    """epoch-1.pt and epoch-2.pt of a randomly initialised tiny model (with model_avg)."""
    from icefall.checkpoint import save_checkpoint

    exp = tmp_path_factory.mktemp("exp")
    params = tiny_params(tiny_ci_dir / "data/lang_bpe_256/bpe.model")
    torch.manual_seed(0)
    model = train.get_transducer_model(params)
    model_avg = train.get_transducer_model(params)
    for epoch in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model_avg.load_state_dict(model.state_dict())
        save_checkpoint(
            exp / f"epoch-{epoch}.pt",
            model,
            model_avg=model_avg,
            params={"batch_idx_train": 10 * epoch, "average_period": 5},
        )
    return exp


def run_script(cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [f"./pruned_transducer_stateless7_streaming/{script}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_decode_script_writes_results(tiny_ci_dir, tiny_exp):
    proc = run_script(
        tiny_ci_dir,
        "decode.py",
        "--epoch=2",
        "--avg=1",
        "--use-averaged-model=1",
        f"--exp-dir={tiny_exp}",
        "--decoding-method=modified_beam_search",
        "--max-duration=60",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res_dir = tiny_exp / "modified_beam_search"
    suffix = "epoch-2-avg-1-streaming-chunk-size-32-modified_beam_search-beam-size-4"
    suffix += "-use-averaged-model"
    for test_set in ("test-clean", "test-other"):
        for kind in ("recogs", "errs", "wer-summary"):
            path = res_dir / f"{kind}-{test_set}-beam_size_4-{suffix}.txt"
            assert path.is_file(), sorted(os.listdir(res_dir))
        summary = (res_dir / f"wer-summary-{test_set}-beam_size_4-{suffix}.txt").read_text()
        assert summary.startswith("settings\tWER\nbeam_size_4\t")
    assert "WER of different settings" in proc.stderr


def test_decode_script_missing_checkpoint(tiny_ci_dir, tiny_exp):
    proc = run_script(
        tiny_ci_dir,
        "decode.py",
        "--epoch=5",
        "--avg=2",
        f"--exp-dir={tiny_exp}",
        "--max-duration=60",
    )
    assert proc.returncode != 0
    assert "epoch-4.pt" in proc.stderr or "epoch-3.pt" in proc.stderr
    assert "--epoch 5" in proc.stderr


def test_streaming_decode_script(tiny_ci_dir, tiny_exp):
    proc = run_script(
        tiny_ci_dir,
        "streaming_decode.py",
        "--epoch=2",
        "--avg=2",
        "--use-averaged-model=0",
        f"--exp-dir={tiny_exp}",
        "--decoding-method=greedy_search",
        "--num-decode-streams=4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res_dir = tiny_exp / "streaming" / "greedy_search"
    suffix = "epoch-2-avg-2-streaming-chunk-size-32-context-2"
    recogs = res_dir / f"recogs-test-clean-greedy_search-{suffix}.txt"
    assert recogs.is_file(), sorted(os.listdir(res_dir))
    num_cuts = sum(1 for _ in gzip.open(tiny_ci_dir / "data/fbank/tiny_cuts_test-clean.jsonl.gz"))
    assert recogs.read_text().count("\tref=") == num_cuts


def test_decode_LG_outputs_arpa_words(tiny_ci_dir, tiny_exp, tmp_path):
    import lhotse

    cuts = lhotse.load_manifest(tiny_ci_dir / "data/fbank/tiny_cuts_test-clean.jsonl.gz")
    words = sorted({w for c in cuts for s in c.supervisions for w in s.text.split()})
    lines = ["\\data\\", f"ngram 1={len(words) + 2}", "", "\\1-grams:", "-1.0 <s>", "-1.0 </s>"]
    lines += [f"{-math.log10(len(words)):.4f} {w}" for w in words] + ["", "\\end\\", ""]
    arpa = tmp_path / "G.arpa"
    arpa.write_text("\n".join(lines))
    proc = run_script(
        tiny_ci_dir,
        "decode.py",
        "--epoch=2",
        "--avg=1",
        "--use-averaged-model=0",
        f"--exp-dir={tiny_exp}",
        "--decoding-method=fast_beam_search_nbest_LG",
        f"--lang-dir={tmp_path}",
        f"--lm-arpa={arpa}",
        "--num-paths=20",
        "--ngram-lm-scale=0.5",
        "--max-duration=60",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recogs = list((tiny_exp / "fast_beam_search_nbest_LG").glob("recogs-test-clean-*.txt"))
    assert len(recogs) == 1
    for line in recogs[0].read_text().splitlines():
        if "\thyp=" in line:
            hyp = eval(line.split("\thyp=")[1])  # a Python list literal
            assert set(hyp) <= set(words)


class FakeBpe:
    """Stands in for sentencepiece: token id i <-> word 'Ti'."""

    def decode(self, ids):
        return " ".join(f"T{i}" for i in ids)

    def encode(self, texts):
        return [[int(w[1:]) for w in text.split()] for text in texts]


@pytest.mark.parametrize(
    "method,extra",
    [
        ("greedy_search", {"max_sym_per_frame": 1}),
        ("greedy_search", {"max_sym_per_frame": 2}),
        ("beam_search", {}),
        ("modified_beam_search", {}),
        ("fast_beam_search", {}),
        ("fast_beam_search_nbest", {}),
        ("fast_beam_search_nbest_oracle", {}),
    ],
)
def test_decode_one_batch_every_method(model_and_features, method, extra):
    import decode

    model, features = model_and_features
    feats = list(features.values())[:3]
    batch = {
        "inputs": torch.nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=LOG_EPS),
        "supervisions": {
            "num_frames": torch.tensor([f.size(0) for f in feats]),
            "text": ["T1 T2", "T3", "T4 T5 T6"],
        },
    }
    params = AttributeDict(
        decoding_method=method,
        beam_size=3,
        beam=8.0,
        max_contexts=4,
        max_states=16,
        num_paths=10,
        nbest_scale=0.5,
        max_sym_per_frame=1,
    )
    params.update(extra)
    graph = trivial_graph(49) if "fast" in method else None
    with torch.no_grad():
        hyps = decode.decode_one_batch(params, model, FakeBpe(), batch, None, graph)
    assert list(hyps) == [decode.result_key(params)]
    (words,) = hyps.values()
    assert len(words) == 3
    assert all(w.startswith("T") and 0 < int(w[1:]) < 50 for hyp in words for w in hyp)
    if method == "greedy_search" and extra["max_sym_per_frame"] == 1:
        enc, enc_lens = decode.encode_batch(model, batch)
        tokens = greedy_search_batch(model, enc, enc_lens)
        assert words == [[f"T{t}" for t in hyp] for hyp in tokens]
