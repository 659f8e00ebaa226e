"""Tests of the embedded tiny corpus: text sources, generator, noise, and prepare.sh stages."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tiny_env

from icefall.data import noise, tts_corpus
from icefall.data.text_sources import Sentence, clean_raw, normalise, sentence_split

PARTS = tts_corpus.PARTS


def read_transcripts(part_dir: Path) -> dict[str, str]:
    """utterance id -> transcript of one LibriSpeech-layout part."""
    out = {}
    for trans in sorted(part_dir.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            out[uid] = text
    return out


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> md5 of every file under ``root`` (symlinks followed for files only)."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def speakers_table(corpus: Path, group: str) -> dict[str, dict[str, str]]:
    lines = (corpus / "meta" / f"{group}.speakers.tsv").read_text().splitlines()
    keys = lines[0].split("\t")
    return {row.split("\t")[0]: dict(zip(keys, row.split("\t"))) for row in lines[1:]}


# ------------------------------------------------------------------------------------------------
# Text


def test_normalise_librispeech_style():
    assert normalise("Don't look back, old-timer!") == "DON'T LOOK BACK OLD TIMER"
    assert normalise("\u201cThe king\u2019s son,\u201d he said.") == "THE KING'S SON HE SAID"
    assert normalise("'quoted' words") == "QUOTED WORDS"


@pytest.mark.parametrize(
    "raw",
    [
        "He paid 20 dollars for the ticket.",  # digits
        "The NASA engineers went home early.",  # all-caps word
        "Mr. Smith went to the market today.",  # abbreviation
        "Too short.",  # fewer than 4 words
        " ".join(["word"] * 30),  # more than 24 words
        "The price was high (about one third) & rising.",  # '&'
    ],
)
def test_unsafe_sentences_are_rejected(raw):
    assert clean_raw(raw) is None


def test_clean_raw_capitalises_and_ends_sentence():
    assert clean_raw("the dog barked at the moon") == "The dog barked at the moon."
    assert clean_raw("\u201cCome here,\u201d she said.") == "Come here, she said."
    assert clean_raw("- 'because they said so, he went") == "Because they said so, he went."


def test_sentence_split_is_a_function_of_the_text():
    texts = [f"SENTENCE NUMBER {w}" for w in ("ONE", "TWO", "THREE", "FOUR")] * 2
    splits = [sentence_split(t) for t in texts]
    assert splits[:4] == splits[4:]
    counts = {s: 0 for s in ("train", "dev", "test")}
    for i in range(5000):
        counts[sentence_split(f"TEXT {i}")] += 1
    assert 50 < counts["dev"] < 150 and 50 < counts["test"] < 150


# ------------------------------------------------------------------------------------------------
# Noise


def test_coloured_noise_spectra_and_snr():
    rng = np.random.default_rng(0)
    n = 32000
    spectra = {}
    for colour in noise.COLOURS:
        x = noise.coloured_noise(colour, n, rng)
        assert x.shape == (n,) and abs(noise.rms(x) - 1.0) < 1e-3
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(n, 1 / 16000)
        spectra[colour] = power[(freqs > 100) & (freqs < 500)].mean() / power[freqs > 4000].mean()
    assert spectra["white"] < spectra["pink"] < spectra["brown"]
    speech = np.sin(np.arange(n) / 10).astype(np.float32)
    hiss = noise.coloured_noise("white", n, rng)
    mixed = noise.mix_at_snr(speech, hiss, 10.0)
    measured = 20 * np.log10(noise.rms(speech) / noise.rms(mixed - speech))
    assert abs(measured - 10.0) < 1e-3


def test_babble_and_reverb_shapes():
    rng = np.random.default_rng(1)
    talkers = [rng.standard_normal(8000 + 1000 * i).astype(np.float32) for i in range(5)]
    b = noise.babble(talkers, 20000, 3, rng)
    assert b.shape == (20000,) and abs(noise.rms(b) - 1.0) < 1e-3
    x = rng.standard_normal(16000).astype(np.float32)
    wet = noise.reverberate(x, 0.3, rng)
    assert wet.shape == x.shape and abs(noise.rms(wet) - noise.rms(x)) < 1e-3
    with pytest.raises(ValueError):
        noise.babble([], 100, 2, rng)


# ------------------------------------------------------------------------------------------------
# Generator: planning, determinism, packages


def fake_sentences(n: int) -> list[Sentence]:
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        raw = " ".join(rng.choice(words, size=5 + i % 7)) + f" {words[i % 12]}"
        raw = raw.capitalize() + " number " + " ".join(words[int(d)] for d in str(i)) + "."
        out.append(Sentence(text=normalise(raw), raw=raw, source="fake"))
    return out


def test_default_plan_keeps_sentences_and_voices_apart():
    config = tts_corpus.corpus_config("default", seed=3, opt_in_voices=True)
    plan = tts_corpus.plan_corpus(config, fake_sentences(20000))
    texts: dict[str, set[str]] = {p: set() for p in PARTS}
    speakers: dict[str, set[int]] = {p: set() for p in PARTS}
    for job in plan["jobs"]:
        for variant in job.variants:
            texts[variant.part] |= {s.sentence.text for s in job.speeches}
            speakers[variant.part].add(job.speaker.speaker_id)
    assert sum(len(j.speeches) for j in plan["jobs"] if j.variants[0].part == "train") == (
        config.num_train
    )
    assert not texts["train"] & (texts["dev"] | texts["test-clean"])
    assert not texts["dev"] & texts["test-clean"]
    assert texts["test-clean"] == texts["test-other"]
    assert speakers["dev"] <= speakers["train"]
    assert speakers["test-clean"] == speakers["test-other"]
    assert not speakers["train"] & speakers["test-clean"]
    train_ids = {s.voice.identity for s in plan["train_speakers"]}
    test_ids = {s.voice.identity for s in plan["test_speakers"]}
    assert not train_ids & test_ids
    train_engines = {s.voice.engine for s in plan["train_speakers"]}
    assert {s.voice.engine for s in plan["test_speakers"]} - train_engines
    formant = [s for s in plan["train_speakers"] if s.voice.engine == "espeak"]
    formant = [s for s in formant if not s.voice.name.startswith("mb-")]
    assert 0 < len(formant) < len(plan["train_speakers"]) / 4
    other_seed = tts_corpus.plan_corpus(replace(config, seed=4), fake_sentences(20000))
    assert [s.sentence for s in other_seed["jobs"][0].speeches] != [
        s.sentence for s in plan["jobs"][0].speeches
    ]


def test_an_utterance_without_speech_is_skipped(tmp_path, monkeypatch):
    def engine(name, speeches, tmp):
        tone = 0.1 * np.sin(np.arange(16000) / 5).astype(np.float32)
        return [np.zeros(8000, np.float32)] + [tone for _ in speeches[1:]]

    monkeypatch.setitem(tts_corpus.ENGINES, "espeak", engine)
    voice = tts_corpus.Voice("espeak:en-us", "espeak-en-us", profiles=1)
    speakers = tts_corpus.make_speakers([voice], 1000, seed=0)
    rng = np.random.default_rng(0)
    (job,) = tts_corpus.plan_chapters(speakers, fake_sentences(3), ["dev"], rng)
    rows = tts_corpus.run_chapter(job, tmp_path)
    assert [r["id"] for r in rows] == ["1000-3000-0001", "1000-3000-0002"]
    assert sorted(read_transcripts(tmp_path / "dev")) == ["1000-3000-0001", "1000-3000-0002"]
    assert not (tmp_path / "dev/1000/3000/1000-3000-0000.flac").exists()
    assert len(tts_corpus.run_chapter(job, tmp_path)) == 2  # a finished chapter is kept


def test_missing_packages_give_the_apt_get_line(monkeypatch):
    monkeypatch.setattr(tts_corpus.shutil, "which", lambda name: None)
    monkeypatch.setattr(tts_corpus.os, "geteuid", lambda: 1000)
    voices = tts_corpus.select_voices(tts_corpus.TRAIN_VOICES, opt_in=False)
    with pytest.raises(RuntimeError, match="apt-get install sox flite festival"):
        tts_corpus.ensure_engines(voices)


def test_a_corpus_of_another_config_is_not_reused(tmp_path):
    config = tts_corpus.corpus_config("ci", seed=1, opt_in_voices=False)
    (tmp_path / ".done").write_text(json.dumps({"seed": 2}))
    with pytest.raises(RuntimeError, match="remove"):
        tts_corpus.generate_corpus(tmp_path, tmp_path / "text", config)


def test_generation_is_deterministic_for_a_seed(tiny_ci_dir, tmp_path):
    text_cache = tiny_ci_dir / "download" / "text"
    config = tts_corpus.corpus_config(
        "ci", seed=7, opt_in_voices=False, num_train=15, num_dev=2, num_test=5, max_words=8
    )
    digests = []
    for name in ("a", "b"):
        tts_corpus.generate_corpus(tmp_path / name, text_cache, config, num_jobs=2)
        digests.append(tree_digest(tmp_path / name))
    assert digests[0] == digests[1]
    flacs = [k for k in digests[0] if k.endswith(".flac")]
    assert len(flacs) == 15 + 2 + 5 + 5
    assert len(set(digests[0][k] for k in flacs)) == len(flacs)
    audio, rate = sf.read(tmp_path / "a" / flacs[0])
    assert rate == 16000 and audio.ndim == 1 and 0.5 < len(audio) / rate < 10


# ------------------------------------------------------------------------------------------------
# prepare.sh on the ci corpus


def test_ci_corpus_layout_and_splits(tiny_ci_dir):
    corpus = tiny_ci_dir / "download" / "tiny"
    transcripts = {part: read_transcripts(corpus / part) for part in PARTS}
    summary = json.loads((corpus / "meta" / "summary.json").read_text())
    for part in PARTS:
        assert len(transcripts[part]) == summary[part]["utterances"] > 0
        for uid in transcripts[part]:
            spk, chap, _ = uid.split("-")
            assert (corpus / part / spk / chap / f"{uid}.flac").is_file()
    texts = {part: set(t.values()) for part, t in transcripts.items()}
    assert not texts["train"] & (texts["dev"] | texts["test-clean"] | texts["test-other"])
    assert sorted(transcripts["test-clean"].values()) == sorted(transcripts["test-other"].values())
    train_spk = speakers_table(corpus, "train")
    test_spk = speakers_table(corpus, "test")
    used = {part: {u.split("-")[0] for u in transcripts[part]} for part in PARTS}
    assert used["train"] | used["dev"] <= set(train_spk)
    assert used["test-clean"] == used["test-other"] <= set(test_spk)
    train_identities = {train_spk[s]["identity"] for s in used["train"]}
    test_identities = {test_spk[s]["identity"] for s in used["test-clean"]}
    assert not train_identities & test_identities
    train_engines = {train_spk[s]["voice"].split(":")[0] for s in used["train"]}
    assert "piper" in {test_spk[s]["voice"].split(":")[0] for s in used["test-clean"]}
    assert "piper" not in train_engines


def test_ci_prepare_outputs(tiny_ci_dir, monkeypatch):
    from lhotse import load_manifest

    monkeypatch.chdir(tiny_ci_dir)  # feature paths are relative to egs/tiny/ASR, as in icefall

    data = tiny_ci_dir / "data"
    summary = json.loads((tiny_ci_dir / "download/tiny/meta/summary.json").read_text())
    for part in PARTS:
        for kind in ("recordings", "supervisions"):
            assert (data / "manifests" / f"tiny_{kind}_{part}.jsonl.gz").is_file()
        cuts = load_manifest(data / "fbank" / f"tiny_cuts_{part}.jsonl.gz")
        factor = 3 if part == "train" else 1  # x0.9 / x1.1 speed perturbation
        assert len(cuts) == factor * summary[part]["utterances"]
        cut = cuts[0]
        assert cut.has_features and cut.num_features == 80 and cut.sampling_rate == 16000
        assert cut.load_features().shape == (cut.num_frames, 80)
    for kind in ("speech", "noise"):
        assert (data / "manifests" / f"musan_recordings_{kind}.jsonl.gz").is_file()
    musan = load_manifest(data / "fbank" / "musan_cuts.jsonl.gz")
    assert len(musan) > 0 and musan[0].num_features == 80
    lang = data / "lang_bpe_256"
    tokens = (lang / "tokens.txt").read_text().split("\n")
    assert tokens[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    assert len([t for t in tokens if t]) == 256
    with gzip.open(data / "manifests" / "tiny_supervisions_train.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    assert first["text"] == first["text"].upper() and first["speaker"].isdigit()


def test_every_stage_rerun_is_a_noop(tiny_ci_dir, tmp_path):
    """Re-running all stages, with and without their .done markers, changes no file."""
    root = tiny_ci_dir.parents[2]  # the directory holding egs/tiny/ASR
    shutil.copytree(root, tmp_path / "copy", symlinks=True)
    tiny_ci_dir = tmp_path / "copy" / tiny_ci_dir.relative_to(root)
    before = tree_digest(tiny_ci_dir / "data") | {
        f"download/{k}": v for k, v in tree_digest(tiny_ci_dir / "download" / "tiny").items()
    }
    mtimes = {p: p.stat().st_mtime_ns for p in (tiny_ci_dir / "data").rglob("*") if p.is_file()}
    markers = [p for p in (tiny_ci_dir / "data").rglob(".*.done")] + [
        tiny_ci_dir / "data" / "lang_bpe_256" / ".done",
        tiny_ci_dir / "download" / "tiny" / ".stage0.done",
    ]
    for with_markers in (True, False):
        if not with_markers:
            for marker in markers:
                marker.unlink()
        subprocess.run(
            ["./prepare.sh", "--size", "ci", "--nj", "2"],
            cwd=tiny_ci_dir,
            env=tiny_env(),
            check=True,
            capture_output=True,
        )
    after = tree_digest(tiny_ci_dir / "data") | {
        f"download/{k}": v for k, v in tree_digest(tiny_ci_dir / "download" / "tiny").items()
    }
    assert after == before
    changed = [
        p for p, t in mtimes.items() if p.stat().st_mtime_ns != t and not p.name.endswith(".done")
    ]
    assert changed == []


def test_prepare_rejects_another_size_on_existing_data(tiny_ci_dir):
    result = subprocess.run(
        ["./prepare.sh", "--size", "default", "--stage", "1", "--stop-stage", "1"],
        cwd=tiny_ci_dir,
        env=tiny_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "size=ci" in result.stdout + result.stderr


def test_opt_in_voices_need_explicit_flag():
    main_only = tts_corpus.select_voices(tts_corpus.TRAIN_VOICES + tts_corpus.TEST_VOICES, False)
    assert all(v.engine not in ("pico",) and not v.name.startswith("mb-") for v in main_only)
    assert all("mbrola" not in v.name for v in main_only)
