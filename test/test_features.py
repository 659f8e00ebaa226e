"""Online kaldi-native-fbank features equal the lhotse features used for training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icefall.features import LOG_EPS, OnlineFeatures, compute_fbank, fbank_options


@pytest.fixture(scope="module")
def waveform() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(16000 + 337) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def test_matches_training_fbank(waveform):
    from icefall.data.fbank import fbank_extractor

    ours = compute_fbank(waveform)
    train = torch.from_numpy(fbank_extractor().extract(waveform, 16000))
    assert ours.shape == train.shape == (round(waveform.size / 160), 80)
    assert torch.allclose(ours, train, atol=2e-3, rtol=1e-4)


def test_options():
    opts = fbank_options()
    assert opts.frame_opts.dither == 0.0
    assert not opts.frame_opts.snip_edges
    assert opts.frame_opts.samp_freq == 16000
    assert opts.mel_opts.num_bins == 80
    assert opts.mel_opts.high_freq == -400
    assert LOG_EPS == pytest.approx(-23.025850929940457)


def test_online_pieces_equal_whole(waveform):
    online = OnlineFeatures()
    pieces = []
    for start in range(0, waveform.size, 2567):
        online.accept_waveform(torch.from_numpy(waveform[start : start + 2567]))
        pieces.append(online.pop_ready())
    online.input_finished()
    pieces.append(online.pop_ready())
    assert torch.equal(torch.cat(pieces), compute_fbank(waveform))


def test_bad_input():
    with pytest.raises(ValueError, match="16000"):
        OnlineFeatures(sample_rate=8000)
    with pytest.raises(ValueError, match="mono"):
        compute_fbank(np.zeros((2, 100), dtype=np.float32))
    assert compute_fbank(np.zeros(0, dtype=np.float32)).shape == (0, 80)
