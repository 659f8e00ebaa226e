"""Online fbank features for inference with kaldi-native-fbank, matching the training features.

The options mirror :func:`icefall.data.fbank.fbank_config` (lhotse ``Fbank`` used for training):
16 kHz, 25 ms window, 10 ms shift, 80 mel bins, dither 0, ``snip_edges=False``, low_freq 20,
high_freq -400, povey window, pre-emphasis 0.97, DC offset removal, power spectrum, log mel.
Samples are floats in [-1, 1] (what ``lhotse`` ``Cut.load_audio`` and ``soundfile`` return).
"""

from __future__ import annotations

from typing import Union

import kaldi_native_fbank as knf
import numpy as np
import torch

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
LOG_EPS = float(np.log(1e-10))

ArrayLike = Union[np.ndarray, torch.Tensor]


def fbank_options(sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS):
    """kaldi-native-fbank options equal to the training ``FbankConfig``."""
    opts = knf.FbankOptions()
    frame = opts.frame_opts
    frame.samp_freq = float(sample_rate)
    frame.frame_shift_ms = 10.0
    frame.frame_length_ms = 25.0
    frame.dither = 0.0
    frame.snip_edges = False
    frame.preemph_coeff = 0.97
    frame.remove_dc_offset = True
    frame.window_type = "povey"
    frame.round_to_power_of_two = True
    opts.mel_opts.num_bins = num_mel_bins
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = -400.0
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    try:
        from icefall.data.fbank import fbank_config
    except ImportError:
        return opts
    config = fbank_config()
    frame.frame_shift_ms = config.frame_shift * 1000
    frame.frame_length_ms = config.frame_length * 1000
    frame.dither = config.dither
    frame.snip_edges = config.snip_edges
    frame.preemph_coeff = config.preemph_coeff
    frame.remove_dc_offset = config.remove_dc_offset
    frame.window_type = config.window_type
    frame.round_to_power_of_two = config.round_to_power_of_two
    opts.mel_opts.low_freq = config.low_freq
    opts.mel_opts.high_freq = config.high_freq
    return opts


def _as_float_array(samples: ArrayLike) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2 and samples.shape[0] == 1:
        samples = samples[0]
    if samples.ndim != 1:
        raise ValueError(
            f"expected mono audio (num_samples,) or (1, num_samples), got {samples.shape}"
        )
    return samples


class OnlineFeatures:
    """Incremental fbank: feed audio pieces, take the frames that are ready.

    Example::

        feats = OnlineFeatures()
        feats.accept_waveform(chunk)          # any number of times
        new_frames = feats.pop_ready()        # (n, 80) float32
        feats.input_finished()                # flush the last frames
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS):
        if sample_rate != SAMPLE_RATE:
            raise ValueError(
                f"audio must be {SAMPLE_RATE} Hz (the model was trained on it), got {sample_rate}"
            )
        self.sample_rate = sample_rate
        self._fbank = knf.OnlineFbank(fbank_options(sample_rate, num_mel_bins))
        self._num_popped = 0

    def accept_waveform(self, samples: ArrayLike) -> None:
        """Append samples (floats in [-1, 1])."""
        self._fbank.accept_waveform(self.sample_rate, _as_float_array(samples).tolist())

    def input_finished(self) -> None:
        self._fbank.input_finished()

    @property
    def num_frames_ready(self) -> int:
        return self._fbank.num_frames_ready

    def pop_ready(self) -> torch.Tensor:
        """(n, num_mel_bins) float32 frames computed since the last call."""
        ready = self._fbank.num_frames_ready
        frames = [self._fbank.get_frame(i) for i in range(self._num_popped, ready)]
        self._num_popped = ready
        if not frames:
            return torch.zeros(0, self._fbank.dim)
        return torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) for f in frames]))


def compute_fbank(samples: ArrayLike, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Fbank of a whole utterance.

    Args:
      samples: (num_samples,) floats in [-1, 1].
      sample_rate: must be 16000.
    Returns:
      (num_frames, 80) float32 log-mel features, ``num_frames = round(num_samples / 160)``.
    """
    online = OnlineFeatures(sample_rate)
    online.accept_waveform(samples)
    online.input_finished()
    return online.pop_ready()
