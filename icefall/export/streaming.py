"""Chunk-wise encoding of one utterance the way sherpa-onnx feeds a streaming encoder.

Used by ``pretrained.py``, ``jit_pretrained.py`` and ``jit_trace_pretrained.py`` so that the
PyTorch checkpoint, the scripted ``cpu_jit.pt``, the traced files and the ONNX files in
sherpa-onnx all see the same chunks: windows of ``chunk_size`` (= ``T``) frames advancing by
``chunk_shift`` (= ``decode_chunk_len``) while ``processed + chunk_size < num_frames``, over
features of the audio followed by 0.66 s of zeros (:func:`utterance_features`).
"""

from typing import Callable, List, Tuple

import numpy as np
import torch

from icefall.export.streaming_reference import resample, sherpa_fbank

EncoderStep = Callable[
    [torch.Tensor, torch.Tensor, List[torch.Tensor]],
    Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]],
]


def utterance_features(samples: np.ndarray, sample_rate: int) -> torch.Tensor:
    """(num_frames, 80) fbank of 16 kHz-resampled ``samples`` plus sherpa's 0.66 s tail padding."""
    return torch.from_numpy(sherpa_fbank(resample(samples, sample_rate)))


def chunked_encoder_forward(
    features: torch.Tensor,
    encoder_step: EncoderStep,
    init_states: List[torch.Tensor],
    chunk_size: int,
    chunk_shift: int,
) -> torch.Tensor:
    """Runs ``encoder_step`` over the chunks of one utterance and concatenates the outputs.

    Args:
      features: (num_frames, 80) from :func:`utterance_features`.
      encoder_step: ``(x (1, chunk_size, 80), x_lens (1,), states) ->
        (encoder_out (1, T', C), encoder_out_lens (1,), new states)``, e.g.
        ``Zipformer.streaming_forward`` or a ``cpu_jit.pt`` module.
      init_states: batch-1 initial states.
      chunk_size: frames per window (``decode_chunk_len + 7``); chunk_shift: frames advanced.

    Returns:
      (1, num_chunks * T', C) encoder output (0 frames when the utterance is shorter than a
      window).
    """
    states = list(init_states)
    outputs = []
    x_lens = torch.tensor([chunk_size], dtype=torch.int64)
    processed = 0
    while processed + chunk_size < features.size(0):
        x = features[processed : processed + chunk_size].unsqueeze(0)
        encoder_out, _, states = encoder_step(x, x_lens, states)
        outputs.append(encoder_out)
        processed += chunk_shift
    if not outputs:
        raise ValueError(
            f"utterance has {features.size(0)} frames, fewer than one chunk ({chunk_size + 1})"
        )
    return torch.cat(outputs, dim=1)
