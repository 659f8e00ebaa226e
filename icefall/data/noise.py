"""Locally generated noise: coloured noise, babble, synthetic reverb, and a MUSAN-like noise set.

The signal helpers work on 1-D float32 arrays at 16 kHz (shape ``(num_samples,)``) and take a
``numpy.random.Generator`` so that every result is reproducible.

:func:`make_noise_set` is stage 2 of ``egs/tiny/ASR/prepare.sh`` when MUSAN is absent: it writes
babble (sums of training utterances of different speakers) and coloured noise as 16 kHz FLAC
files plus lhotse recording manifests named like lhotse's MUSAN ones
(``musan_recordings_speech.jsonl.gz`` for babble, ``musan_recordings_noise.jsonl.gz`` for
coloured noise), so the MUSAN feature stage and ``--enable-musan`` work unchanged.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
COLOURS = ("white", "pink", "brown")


def rms(x: np.ndarray) -> float:
    """Root mean square of ``x`` (any shape); 0 for an empty array."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def coloured_noise(colour: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise of shape ``(num_samples,)`` with a 1/f^k spectrum.

    ``colour`` is ``white`` (k=0), ``pink`` (k=1) or ``brown`` (k=2).
    """
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}[colour]
    white = rng.standard_normal(num_samples)
    if exponent == 0.0:
        shaped = white
    else:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(num_samples, d=1.0 / SAMPLE_RATE)
        freqs[0] = freqs[1] if num_samples > 1 else 1.0
        # Start the slope at 20 Hz so brown noise does not become a DC drift.
        spectrum /= np.maximum(freqs, 20.0) ** (exponent / 2)
        shaped = np.fft.irfft(spectrum, n=num_samples)
    shaped -= shaped.mean()
    return (shaped / max(rms(shaped), 1e-12)).astype(np.float32)


def babble(
    talkers: Sequence[np.ndarray], num_samples: int, num_voices: int, rng: np.random.Generator
) -> np.ndarray:
    """Unit-RMS babble of shape ``(num_samples,)``: ``num_voices`` talkers summed.

    Each chosen talker (a 1-D array) is looped and read from a random offset; every talker is
    scaled to unit RMS before summing so no single voice dominates.
    """
    if not talkers:
        raise ValueError("babble needs at least one talker")
    chosen = rng.choice(len(talkers), size=min(num_voices, len(talkers)), replace=False)
    out = np.zeros(num_samples, dtype=np.float64)
    for i in chosen:
        talker = talkers[int(i)]
        start = int(rng.integers(0, len(talker)))
        idx = (start + np.arange(num_samples)) % len(talker)
        out += talker[idx] / max(rms(talker), 1e-12)
    return (out / max(rms(out), 1e-12)).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + noise`` with the noise scaled to ``snr_db`` relative to the speech RMS.

    Both are 1-D with the same shape ``(num_samples,)``.
    """
    gain = rms(speech) / max(rms(noise), 1e-12) / (10.0 ** (snr_db / 20.0))
    return (speech + gain * noise).astype(np.float32)


def synthetic_rir(
    rt60: float, rng: np.random.Generator, drr_db: tuple[float, float] = (2.0, 10.0)
) -> np.ndarray:
    """A room impulse response of shape ``(int(rt60 * 16000),)``: a direct path then
    exponentially decaying Gaussian noise reaching -60 dB at ``rt60`` seconds, with a
    direct-to-reverberant energy ratio drawn from ``drr_db``."""
    n = max(int(rt60 * SAMPLE_RATE), 2)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)
    tail[0] = 0.0
    drr = float(rng.uniform(*drr_db))
    rir = tail * np.sqrt(10.0 ** (-drr / 10.0) / max(float(np.sum(tail**2)), 1e-12))
    rir[0] = 1.0
    return (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)


def reverberate(speech: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """``speech`` (``(num_samples,)``) convolved with :func:`synthetic_rir`, same length and RMS."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(speech, synthetic_rir(rt60, rng))[: len(speech)]
    return (wet * (rms(speech) / max(rms(wet), 1e-12))).astype(np.float32)


def _write_flac(path: Path, audio: np.ndarray, peak: float = 0.5) -> None:
    """Writes ``audio`` (``(num_samples,)``) scaled to the given peak as 16-bit FLAC."""
    audio = audio * (peak / max(float(np.max(np.abs(audio))), 1e-12))
    sf.write(str(path), audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")


def _load_speakers(recordings_manifest: Path) -> dict[str, list[Path]]:
    """Audio paths of a lhotse recording manifest grouped by speaker (LibriSpeech ids)."""
    from lhotse import load_manifest_lazy

    by_speaker: dict[str, list[Path]] = {}
    for rec in load_manifest_lazy(recordings_manifest):
        by_speaker.setdefault(rec.id.split("-")[0], []).append(Path(rec.sources[0].source))
    return {spk: sorted(paths) for spk, paths in sorted(by_speaker.items())}


def _babble_clip(
    by_speaker: dict[str, list[Path]], num_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """One babble clip (``(num_samples,)``) from 3-6 different speakers' utterances."""
    speakers = sorted(by_speaker)
    count = min(int(rng.integers(3, 7)), len(speakers))
    chosen = rng.choice(len(speakers), size=count, replace=False)
    talkers = []
    for i in chosen:
        paths = by_speaker[speakers[int(i)]]
        order = rng.permutation(len(paths))
        pieces, total = [], 0
        for j in order:
            audio, _ = sf.read(str(paths[int(j)]), dtype="float32")
            pieces.append(audio)
            total += len(audio)
            if total >= num_samples:
                break
        talkers.append(np.concatenate(pieces))
    return babble(talkers, num_samples, len(talkers), rng)


def make_noise_set(
    train_recordings: Path,
    audio_dir: Path,
    manifest_dir: Path,
    num_babble: int,
    num_coloured: int,
    clip_seconds: float = 10.0,
    seed: int = 0,
) -> None:
    """Writes babble and coloured-noise clips and their MUSAN-named lhotse manifests.

    Babble: ``num_babble`` clips, each the sum of 3-6 different training speakers read from
    ``train_recordings`` (a lhotse recording manifest). Coloured noise: ``num_coloured`` clips
    cycling white/pink/brown. All clips are ``clip_seconds`` long, 16 kHz mono FLAC in
    ``audio_dir``; manifests go to ``manifest_dir``. Nothing is done when both manifests exist.
    """
    from lhotse import Recording, RecordingSet

    outputs = [manifest_dir / f"musan_recordings_{k}.jsonl.gz" for k in ("speech", "noise")]
    if all(p.exists() for p in outputs):
        logging.info(f"{outputs[0]} and {outputs[1].name} exist: nothing to do")
        return
    audio_dir.mkdir(parents=True, exist_ok=True)
    manifest_dir.mkdir(parents=True, exist_ok=True)
    num_samples = int(clip_seconds * SAMPLE_RATE)
    by_speaker = _load_speakers(train_recordings)
    if len(by_speaker) < 2:
        raise ValueError(f"{train_recordings}: babble needs at least 2 speakers")
    rng = np.random.default_rng(seed)
    babble_recs, noise_recs = [], []
    for i in range(num_babble):
        path = audio_dir / f"babble-{i:04d}.flac"
        _write_flac(path, _babble_clip(by_speaker, num_samples, rng))
        babble_recs.append(Recording.from_file(path, recording_id=path.stem))
    for i in range(num_coloured):
        colour = COLOURS[i % len(COLOURS)]
        path = audio_dir / f"{colour}-{i:04d}.flac"
        _write_flac(path, coloured_noise(colour, num_samples, rng))
        noise_recs.append(Recording.from_file(path, recording_id=path.stem))
    RecordingSet.from_recordings(noise_recs).to_file(outputs[1])
    RecordingSet.from_recordings(babble_recs).to_file(outputs[0])
    logging.info(
        f"noise set: {num_babble} babble + {num_coloured} coloured clips of {clip_seconds} s "
        f"in {audio_dir}, manifests in {manifest_dir}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """CLI for :func:`make_noise_set`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-recordings", type=Path, required=True)
    parser.add_argument("--audio-dir", type=Path, required=True)
    parser.add_argument("--manifest-dir", type=Path, required=True)
    parser.add_argument("--num-babble", type=int, default=40)
    parser.add_argument("--num-coloured", type=int, default=30)
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    make_noise_set(
        args.train_recordings,
        args.audio_dir,
        args.manifest_dir,
        args.num_babble,
        args.num_coloured,
        args.clip_seconds,
        args.seed,
    )


if __name__ == "__main__":
    main()
