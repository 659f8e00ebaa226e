#!/usr/bin/env python3
"""Deployment check and speed: sherpa-onnx on the exported model vs our PyTorch streaming decode.

Run from ``egs/<corpus>/ASR`` after ``export.py --jit 1`` and ``export-onnx.py``::

  python ../../../benchmarks/deploy.py --corpus tiny \\
      --exp-dir pruned_transducer_stateless7_streaming/exp --output exp/deploy.json

For every test set (the corpus's test parts, or ``--cuts`` manifests) on the same audio, with
``--num-threads`` (1) threads and ``--num-streams`` (1) streams at a time, it decodes with

* ``sherpa_onnx``: sherpa-onnx ``OnlineRecognizer`` (child process) on
  ``encoder-<suffix>.onnx`` etc. (``*.int8.onnx`` too: ``sherpa_onnx_int8``), greedy search;
* ``pytorch_streaming_decode``: ``streaming_decode.py``'s machinery (``DecodeStream``,
  ``decode_streams``, kaldi-native-fbank features, greedy search) on the PyTorch model:
  ``--checkpoint`` / ``exp_dir/pretrained.pt`` (eager model) or else ``exp_dir/cpu_jit.pt``;
* ``pytorch_sherpa_chunking``: the same PyTorch model fed exactly like sherpa-onnx (0.66 s
  tail padding, windows of ``T`` frames), not timed: its tokens must equal sherpa-onnx's
  even for a random-weight model.

and prints one JSON object: per set the WER and real-time factor (decode wall time, features
included, over audio time) of each, the fraction of utterances whose token sequences are
identical (sherpa vs streaming_decode, sherpa vs sherpa-chunked PyTorch, int8 vs float), and
overall ``rtf_sherpa_onnx``, ``rtf_pytorch`` and ``rtf_ratio_pytorch_over_sherpa``.
"""

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs/librispeech/ASR/pruned_transducer_stateless7_streaming"
sys.path.insert(0, str(RECIPE))

from kaldialign import edit_distance  # noqa: E402
from lhotse import CutSet  # noqa: E402
from streaming_decode import decode_streams, make_stream  # noqa: E402
from train import (  # noqa: E402
    add_model_arguments,
    apply_corpus_defaults,
    get_params,
    get_transducer_model,
)

from icefall.data.corpora import detect_corpus, get_corpus  # noqa: E402
from icefall.decoding.greedy import greedy_search_batch  # noqa: E402
from icefall.export.model_loading import set_vocabulary_params  # noqa: E402
from icefall.export.sherpa_decode import run_sherpa_onnx  # noqa: E402
from icefall.export.streaming import chunked_encoder_forward, utterance_features  # noqa: E402
from icefall.export.streaming_reference import resample  # noqa: E402
from icefall.features import compute_fbank  # noqa: E402
from icefall.utils import AttributeDict  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default=None, help="default: from the current directory")
    parser.add_argument(
        "--exp-dir", type=Path, default=Path("pruned_transducer_stateless7_streaming/exp")
    )
    parser.add_argument("--tokens", default="data/lang_bpe_500/tokens.txt", help="tokens.txt")
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/fbank"))
    parser.add_argument("--cuts", nargs="*", default=None, help="cut manifests (default: tests)")
    parser.add_argument(
        "--onnx-suffix",
        default=None,
        help="use {encoder,decoder,joiner}-<suffix>.onnx (default: the newest in --exp-dir)",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="PyTorch weights {'model': ...} (default: see above)"
    )
    parser.add_argument("--context-size", type=int, default=2)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument(
        "--num-streams", type=int, default=1, help="streams decoded together (both decoders)"
    )
    parser.add_argument("--max-utterances", type=int, default=0, help="per set; 0 = all")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    add_model_arguments(parser)
    return parser


def find_onnx_suffix(exp_dir: Path) -> str:
    """Suffix of the newest ``encoder-<suffix>.onnx`` (not int8) in ``exp_dir``."""
    candidates = [p for p in exp_dir.glob("encoder-*.onnx") if not p.name.endswith(".int8.onnx")]
    if not candidates:
        raise FileNotFoundError(f"no encoder-*.onnx in {exp_dir}; run export-onnx.py first")
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    return newest.name[len("encoder-") : -len(".onnx")]


def load_pytorch_model(params: AttributeDict) -> Tuple[torch.nn.Module, str]:
    """The eager model from ``--checkpoint`` or ``pretrained.pt``, else ``cpu_jit.pt``."""
    checkpoint = params.checkpoint or params.exp_dir / "pretrained.pt"
    if Path(checkpoint).is_file():
        model = get_transducer_model(params)
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
        model.load_state_dict(state, strict=True)
        model.eval()
        model.unk_id = params.unk_id
        return model, f"{checkpoint} (eager)"
    jit_file = params.exp_dir / "cpu_jit.pt"
    if not jit_file.is_file():
        raise FileNotFoundError(f"neither {checkpoint} nor {jit_file}: run export.py")
    scripted = torch.jit.load(str(jit_file), map_location="cpu").eval()
    model = torch.nn.Module()
    model.encoder, model.decoder, model.joiner = scripted.encoder, scripted.decoder, scripted.joiner
    model.unk_id = params.unk_id
    return model, f"{jit_file} (TorchScript)"


def word_errors(refs: Sequence[List[str]], hyps: Sequence[List[str]]) -> float:
    """WER in percent over all utterances."""
    errors = sum(edit_distance(r, h)["total"] for r, h in zip(refs, hyps))
    return 100.0 * errors / max(1, sum(len(r) for r in refs))


def decode_pytorch_streaming(
    model: torch.nn.Module, params: AttributeDict, utterances: List[Tuple]
) -> Tuple[Dict[str, List[int]], float]:
    """streaming_decode.py's loop (``--num-streams`` at a time) after an untimed warm-up on the
    first utterance (as for sherpa-onnx); returns token ids per cut and wall seconds."""
    decode_params = AttributeDict(
        decoding_method="greedy_search",
        decode_chunk_len=params.decode_chunk_len,
        num_decode_streams=params.num_streams,
        num_active_paths=4,
        beam=4.0,
        max_contexts=4,
        max_states=32,
    )
    decode_streams(decode_params, model, _streams(decode_params, model, utterances[:1]))
    begin = time.perf_counter()
    finished = decode_streams(decode_params, model, _streams(decode_params, model, utterances))
    seconds = time.perf_counter() - begin
    return {s.id: s.decoding_result() for s in finished}, seconds


def _streams(decode_params: AttributeDict, model: torch.nn.Module, utterances: List[Tuple]):
    return (
        make_stream(decode_params, model, cut_id, compute_fbank(resample(samples, rate)), None)
        for cut_id, samples, rate, _ in utterances
    )


def decode_pytorch_sherpa_chunking(
    model: torch.nn.Module, params: AttributeDict, utterances: List[Tuple]
) -> Dict[str, List[int]]:
    """Greedy search on encoder outputs computed with sherpa-onnx's chunking."""
    out = {}
    chunk_shift = params.decode_chunk_len
    for cut_id, samples, rate, _ in utterances:
        encoder_out = chunked_encoder_forward(
            utterance_features(samples, rate),
            model.encoder.streaming_forward,
            model.encoder.get_init_state(device=torch.device("cpu")),
            chunk_size=chunk_shift + 7,
            chunk_shift=chunk_shift,
        )
        lens = torch.tensor([encoder_out.size(1)], dtype=torch.int64)
        out[cut_id] = greedy_search_batch(model, encoder_out, lens)[0]
    return out


def sherpa_tokens_to_ids(tokens: List[str], symbol_to_id: Dict[str, int]) -> List[int]:
    return [symbol_to_id.get(t, -1) for t in tokens]


def evaluate_set(
    name: str,
    cuts_file: Path,
    params: AttributeDict,
    model: torch.nn.Module,
    onnx: Dict[str, Path],
    id_to_symbol: Dict[int, str],
) -> Dict:
    cuts = CutSet.from_file(str(cuts_file))
    if params.max_utterances > 0:
        cuts = cuts.subset(first=params.max_utterances)
    cuts = cuts.to_eager()
    utterances, unreadable = [], 0
    for cut in cuts:
        try:
            audio = cut.load_audio().mean(axis=0)
        except Exception as e:  # lhotse raises AudioLoadingError and OS errors
            logging.warning(f"skipping cut {cut.id}: its audio cannot be read ({e})")
            unreadable += 1
            continue
        text = " ".join(s.text or "" for s in cut.supervisions)
        utterances.append((cut.id, audio, int(cut.sampling_rate), text.split()))
    if not utterances:
        raise RuntimeError(f"no cut of {cuts_file} has readable audio ({unreadable} tried)")
    cuts = cuts.subset(cut_ids=[u[0] for u in utterances])
    audio_seconds = sum(len(a) / r for _, a, r, _ in utterances)
    refs = {cut_id: words for cut_id, _, _, words in utterances}
    symbol_to_id = {s.replace("\u2581", " "): i for i, s in id_to_symbol.items()}

    def text_of(ids: List[int]) -> List[str]:
        return "".join(id_to_symbol.get(i, "") for i in ids).replace("\u2581", " ").split()

    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "cuts.jsonl.gz"
        cuts.to_file(str(subset))
        sherpa = {}
        for kind in ("", "_int8"):
            result = run_sherpa_onnx(
                onnx[f"encoder{kind}"], onnx[f"decoder{kind}"], onnx[f"joiner{kind}"],
                params.tokens, cuts=subset, num_threads=params.num_threads,
                num_streams=params.num_streams,
            )  # fmt: skip
            ids = {
                r["id"]: sherpa_tokens_to_ids(r["tokens"], symbol_to_id) for r in result["results"]
            }
            sherpa[kind] = (ids, result["decode_seconds"])

    pytorch_ids, pytorch_seconds = decode_pytorch_streaming(model, params, utterances)
    with torch.no_grad():
        chunked_ids = decode_pytorch_sherpa_chunking(model, params, utterances)
    order = [cut_id for cut_id, _, _, _ in utterances]
    ref_words = [refs[c] for c in order]

    def summary(ids: Dict[str, List[int]], seconds: Optional[float]) -> Dict:
        out = {"wer": word_errors(ref_words, [text_of(ids[c]) for c in order])}
        if seconds is not None:
            out["rtf"] = seconds / audio_seconds
        return out

    def identical(a: Dict[str, List[int]], b: Dict[str, List[int]]) -> float:
        return sum(a[c] == b[c] for c in order) / max(1, len(order))

    float_ids, float_seconds = sherpa[""]
    int8_ids, int8_seconds = sherpa["_int8"]
    return {
        "cuts": str(cuts_file),
        "num_utterances": len(order),
        "num_skipped_unreadable_audio": unreadable,
        "audio_seconds": audio_seconds,
        "sherpa_onnx": summary(float_ids, float_seconds),
        "sherpa_onnx_int8": summary(int8_ids, int8_seconds),
        "pytorch_streaming_decode": summary(pytorch_ids, pytorch_seconds),
        "pytorch_sherpa_chunking": summary(chunked_ids, None),
        "identical_tokens_sherpa_vs_streaming_decode": identical(float_ids, pytorch_ids),
        "identical_tokens_sherpa_vs_pytorch_sherpa_chunking": identical(float_ids, chunked_ids),
        "identical_tokens_int8_vs_float": identical(int8_ids, float_ids),
        f"_seconds_{name}": {"sherpa": float_seconds, "pytorch": pytorch_seconds},
    }


@torch.no_grad()
def main() -> None:
    parser = get_parser()
    apply_corpus_defaults(parser)
    args = parser.parse_args()
    params = AttributeDict(get_params())
    params.update(vars(args))
    params.exp_dir = Path(params.exp_dir)
    torch.set_num_threads(params.num_threads)
    token_table = set_vocabulary_params(params, params.tokens)
    id_to_symbol = {i: s for s, i in token_table.items()}
    corpus = get_corpus(params.corpus or detect_corpus())

    suffix = params.onnx_suffix or find_onnx_suffix(params.exp_dir)
    onnx = {}
    for role in ("encoder", "decoder", "joiner"):
        onnx[role] = params.exp_dir / f"{role}-{suffix}.onnx"
        onnx[f"{role}_int8"] = params.exp_dir / f"{role}-{suffix}.int8.onnx"
    missing = [str(p) for p in onnx.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing ONNX files {missing}; run export-onnx.py")
    model, model_description = load_pytorch_model(params)

    cuts_files = [Path(c) for c in params.cuts] if params.cuts else [
        params.manifest_dir / corpus.cuts_filename(part) for part in corpus.test
    ]  # fmt: skip
    report = {
        "corpus": corpus.name,
        "onnx": str(onnx["encoder"]).replace("encoder-", "{encoder,decoder,joiner}-"),
        "pytorch_model": model_description,
        "num_threads": params.num_threads,
        "num_streams": params.num_streams,
        "test_sets": {},
    }
    totals = {"audio": 0.0, "sherpa": 0.0, "pytorch": 0.0}
    for cuts_file in cuts_files:
        name = cuts_file.name.replace(".jsonl.gz", "")
        logging.info(f"Decoding {cuts_file}")
        result = evaluate_set(name, cuts_file, params, model, onnx, id_to_symbol)
        seconds = result.pop(f"_seconds_{name}")
        totals["audio"] += result["audio_seconds"]
        totals["sherpa"] += seconds["sherpa"]
        totals["pytorch"] += seconds["pytorch"]
        report["test_sets"][name] = result
    report["rtf_sherpa_onnx"] = totals["sherpa"] / max(totals["audio"], 1e-9)
    report["rtf_pytorch"] = totals["pytorch"] / max(totals["audio"], 1e-9)
    report["rtf_ratio_pytorch_over_sherpa"] = totals["pytorch"] / max(totals["sherpa"], 1e-9)
    text = json.dumps(report, indent=2)
    if params.output:
        params.output.parent.mkdir(parents=True, exist_ok=True)
        params.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    logging.basicConfig(
        format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
        level=logging.INFO,
    )
    main()
