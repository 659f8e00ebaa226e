#!/usr/bin/env python3
"""Decode audio with sherpa-onnx's streaming ``OnlineRecognizer`` in a separate process.

sherpa-onnx ends the whole process (``_Exit``, or a segfault) on a model that breaks its
contract, so callers use :func:`run_sherpa_onnx` which starts this module as a child process
and returns its JSON. The child can also be run by hand::

    python -m icefall.export.sherpa_decode --encoder encoder.onnx --decoder decoder.onnx \\
        --joiner joiner.onnx --tokens tokens.txt --wav a.wav b.flac
    python -m icefall.export.sherpa_decode ... --cuts data/fbank/tiny_cuts_test-clean.jsonl.gz

It prints one JSON object: per utterance the emitted token strings, the text and the audio
duration, plus the decoding wall time (features + encoder + search; loading excluded) and the
real-time factor.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]
TAIL_PADDING_SECONDS = 0.66  # what sherpa-onnx's examples append before input_finished()


def load_wav_files(paths: Sequence[PathLike]) -> Iterator[Tuple[str, np.ndarray, int]]:
    """Yields ``(path, samples (num_samples,) float32 in [-1, 1], sample_rate)`` per file.

    Multi-channel audio is averaged to mono.

    Raises:
      ValueError: naming the file when it cannot be read as audio.
    """
    import soundfile as sf

    for path in paths:
        try:
            samples, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, OSError
            raise ValueError(f"cannot read audio file {path}: {e}") from e
        yield str(path), samples.mean(axis=1).astype(np.float32), int(sample_rate)


def load_cuts_audio(cuts_path: PathLike) -> Iterator[Tuple[str, np.ndarray, int]]:
    """Yields ``(cut id, mono float32 samples, sample_rate)`` for every cut of a lhotse manifest."""
    from lhotse import CutSet

    for cut in CutSet.from_file(str(cuts_path)):
        audio = cut.load_audio()  # (channels, num_samples)
        yield cut.id, audio.mean(axis=0).astype(np.float32), int(cut.sampling_rate)


def decode_in_this_process(
    encoder: PathLike,
    decoder: PathLike,
    joiner: PathLike,
    tokens: PathLike,
    utterances: Sequence[Tuple[str, np.ndarray, int]],
    num_threads: int = 1,
    decoding_method: str = "greedy_search",
    max_active_paths: int = 4,
    tail_padding_seconds: float = TAIL_PADDING_SECONDS,
    num_streams: int = 1,
    warmup: bool = True,
) -> Dict:
    """Decodes ``utterances`` with ``sherpa_onnx.OnlineRecognizer.from_transducer``.

    Warning: a bad model ends this process; call :func:`run_sherpa_onnx` from other code.

    Args:
      utterances: ``(id, samples (S,) float32, sample_rate)`` tuples.
      num_streams: streams decoded together with ``decode_streams`` (1 = one at a time).
      warmup: decode the first utterance once, untimed, before timing.

    Returns:
      ``{"results": [{"id", "tokens", "text", "duration"}], "decode_seconds",
      "audio_seconds", "rtf", "num_threads", "decoding_method"}``.
    """
    import sherpa_onnx

    recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(tokens),
        encoder=str(encoder),
        decoder=str(decoder),
        joiner=str(joiner),
        num_threads=num_threads,
        sample_rate=16000,
        feature_dim=80,
        decoding_method=decoding_method,
        max_active_paths=max_active_paths,
    )

    def decode_group(group: Sequence[Tuple[str, np.ndarray, int]]) -> list:
        streams = []
        for _, samples, sample_rate in group:
            stream = recognizer.create_stream()
            stream.accept_waveform(sample_rate, samples)
            tail = np.zeros(int(tail_padding_seconds * sample_rate), dtype=np.float32)
            stream.accept_waveform(sample_rate, tail)
            stream.input_finished()
            streams.append(stream)
        while True:
            ready = [s for s in streams if recognizer.is_ready(s)]
            if not ready:
                break
            recognizer.decode_streams(ready)
        return streams

    if warmup and utterances:
        decode_group(utterances[:1])
    results: List[Dict] = []
    decode_seconds = 0.0
    for start in range(0, len(utterances), num_streams):
        group = utterances[start : start + num_streams]
        begin = time.perf_counter()
        streams = decode_group(group)
        decode_seconds += time.perf_counter() - begin
        for (utt_id, samples, sample_rate), stream in zip(group, streams):
            result = recognizer.get_result_all(stream)
            results.append(
                {
                    "id": utt_id,
                    "tokens": list(result.tokens),
                    "text": result.text.strip(),
                    "duration": len(samples) / sample_rate,
                }
            )
    audio_seconds = sum(r["duration"] for r in results)
    return {
        "results": results,
        "decode_seconds": decode_seconds,
        "audio_seconds": audio_seconds,
        "rtf": decode_seconds / audio_seconds if audio_seconds > 0 else float("nan"),
        "num_threads": num_threads,
        "decoding_method": decoding_method,
    }


def run_sherpa_onnx(
    encoder: PathLike,
    decoder: PathLike,
    joiner: PathLike,
    tokens: PathLike,
    wav_files: Optional[Sequence[PathLike]] = None,
    cuts: Optional[PathLike] = None,
    num_threads: int = 1,
    decoding_method: str = "greedy_search",
    num_streams: int = 1,
    timeout: float = 1800.0,
) -> Dict:
    """Runs :func:`decode_in_this_process` in a child process and returns its JSON result.

    Exactly one of ``wav_files`` and ``cuts`` (a lhotse cut manifest) names the audio.

    Raises:
      RuntimeError: when the child fails, e.g. sherpa-onnx rejected the model (exit code 255)
        or crashed (negative exit code); the message carries the end of its output.
    """
    if (wav_files is None) == (cuts is None):
        raise ValueError("pass exactly one of wav_files and cuts")
    cmd = [
        sys.executable, "-m", "icefall.export.sherpa_decode",
        "--encoder", str(encoder), "--decoder", str(decoder), "--joiner", str(joiner),
        "--tokens", str(tokens), "--num-threads", str(num_threads),
        "--decoding-method", decoding_method, "--num-streams", str(num_streams),
    ]  # fmt: skip
    cmd += ["--cuts", str(cuts)] if cuts is not None else ["--wav", *map(str, wav_files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"sherpa-onnx child process failed with exit code {proc.returncode} "
            f"(255: sherpa rejected the model; negative: it crashed):\n"
            f"{(proc.stdout + proc.stderr)[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", required=True, help="encoder.onnx")
    parser.add_argument("--decoder", required=True, help="decoder.onnx")
    parser.add_argument("--joiner", required=True, help="joiner.onnx")
    parser.add_argument("--tokens", required=True, help="tokens.txt")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument(
        "--decoding-method",
        default="greedy_search",
        choices=["greedy_search", "modified_beam_search"],
    )
    parser.add_argument("--max-active-paths", type=int, default=4)
    parser.add_argument("--num-streams", type=int, default=1, help="streams decoded together")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", nargs="+", help="sound files (any sample rate)")
    source.add_argument("--cuts", help="lhotse cut manifest whose recordings are decoded")
    return parser


def main() -> None:
    args = get_parser().parse_args()
    if args.wav:
        utterances = list(load_wav_files(args.wav))
    else:
        utterances = list(load_cuts_audio(args.cuts))
    output = decode_in_this_process(
        args.encoder,
        args.decoder,
        args.joiner,
        args.tokens,
        utterances,
        num_threads=args.num_threads,
        decoding_method=args.decoding_method,
        max_active_paths=args.max_active_paths,
        num_streams=args.num_streams,
    )
    print(json.dumps(output, ensure_ascii=False))


if __name__ == "__main__":
    main()
