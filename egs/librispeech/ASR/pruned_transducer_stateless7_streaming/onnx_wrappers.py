"""Export views of the streaming Zipformer transducer (ONNX and TorchScript).

* :class:`OnnxEncoder`: one streaming step, ``(x, states) -> (encoder_out, new_states)``, with
  ``encoder_proj`` applied, as sherpa-onnx's ``zipformer`` model type expects.
* :class:`OnnxDecoder`: ``y (N, context_size) -> decoder_out (N, joiner_dim)`` (``decoder_proj``
  applied; ``-1`` in ``y`` means "no token").
* :class:`OnnxJoiner`: ``output_linear(tanh(encoder_out + decoder_out))``.
* :class:`StreamingEncoderStep` and :class:`DecoderStep`: the streaming step (explicit lengths,
  no projection) and the decoding-time decoder call, for ``torch.jit.trace``.
* :class:`StreamingTransducerJit`: the scriptable model written to ``cpu_jit.pt``; its
  ``forward`` is the encoder's streaming step.

Also the ONNX names, dynamic axes and metadata of the encoder (:func:`encoder_io_names`,
:func:`encoder_dynamic_axes`, :func:`encoder_meta_data`).
"""

from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from zipformer import STATE_BATCH_DIMS, STATE_NAMES

from icefall.export.onnx_meta import zipformer_streaming_meta_data

PAD_LENGTH = 7  # feature frames of right context the convolutional front end consumes


class OnnxEncoder(nn.Module):
    """Streaming encoder step followed by the joiner's ``encoder_proj``.

    Args:
      encoder: a Zipformer with ``streaming_forward(x, x_lens, states)``.
      encoder_proj: ``joiner.encoder_proj`` (encoder_dim -> joiner_dim).
    """

    def __init__(self, encoder: nn.Module, encoder_proj: nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.encoder_proj = encoder_proj

    def forward(
        self, x: torch.Tensor, states: List[torch.Tensor]
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """One chunk.

        Args:
          x: (N, T, 80) features, T = decode_chunk_len + 7; every row is full length.
          states: the 7 * num_stacks state tensors (see ``zipformer.STATE_NAMES``).

        Returns:
          (encoder_out (N, T_out, joiner_dim), new states with the shapes of ``states``).
        """
        x_lens = torch.full((x.size(0),), x.size(1), dtype=torch.int64, device=x.device)
        encoder_out, _, new_states = self.encoder.streaming_forward(
            x=x, x_lens=x_lens, states=states
        )
        return self.encoder_proj(encoder_out), new_states


class OnnxDecoder(nn.Module):
    """Decoder for one context window followed by the joiner's ``decoder_proj``.

    Args:
      decoder: the stateless decoder (``forward(y, need_pad)``).
      decoder_proj: ``joiner.decoder_proj`` (decoder_dim -> joiner_dim).
    """

    def __init__(self, decoder: nn.Module, decoder_proj: nn.Linear):
        super().__init__()
        self.decoder = decoder
        self.decoder_proj = decoder_proj

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y: (N, context_size) int64 ids (-1 = no token) -> (N, joiner_dim)."""
        decoder_out = self.decoder(y, need_pad=False).squeeze(1)
        return self.decoder_proj(decoder_out)


class OnnxJoiner(nn.Module):
    """``output_linear(tanh(encoder_out + decoder_out))`` on already projected inputs.

    Args:
      output_linear: ``joiner.output_linear`` (joiner_dim -> vocab_size).
    """

    def __init__(self, output_linear: nn.Linear):
        super().__init__()
        self.output_linear = output_linear

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        """(N, joiner_dim), (N, joiner_dim) -> logits (N, vocab_size)."""
        return self.output_linear(torch.tanh(encoder_out + decoder_out))


class StreamingEncoderStep(nn.Module):
    """``forward`` = ``encoder.streaming_forward``; the thin module ``torch.jit.trace`` sees.

    Args:
      encoder: a Zipformer with ``streaming_forward(x, x_lens, states)``.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(
        self, x: torch.Tensor, x_lens: torch.Tensor, states: List[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """x: (N, T, 80), x_lens: (N,) -> (encoder_out (N, T', C), lens (N,), new states)."""
        return self.encoder.streaming_forward(x=x, x_lens=x_lens, states=states)


class DecoderStep(nn.Module):
    """``decoder(y, need_pad=False)`` as (N, decoder_dim), the decoding-time call, for tracing.

    Args:
      decoder: the stateless decoder.
    """

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y: (N, context_size) int64 (-1 = no token) -> (N, decoder_dim), unprojected."""
        return self.decoder(y, need_pad=False).squeeze(1)


class StreamingTransducerJit(nn.Module):
    """The model saved as ``cpu_jit.pt`` (``torch.jit.script``-ed).

    ``forward`` runs one streaming encoder step. The decoder and joiner are reachable as
    ``model.decoder`` / ``model.joiner`` (icefall's call signatures) and through
    ``run_decoder`` / ``run_joiner``; ``get_init_state`` returns batch-1 zero states.
    Integer attributes describe the streaming setup: ``decode_chunk_len`` (feature frames
    advanced per step), ``pad_length`` (extra right-context frames fed per step),
    ``context_size``, ``vocab_size`` and ``blank_id``.

    Args:
      encoder, decoder, joiner: the trained modules (after ``convert_scaled_to_non_scaled``).
      decode_chunk_len: feature frames (100 Hz) advanced per step.
    """

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, joiner: nn.Module, decode_chunk_len: int
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.joiner = joiner
        self.decode_chunk_len = int(decode_chunk_len)
        self.pad_length = PAD_LENGTH
        self.context_size = int(decoder.context_size)
        self.vocab_size = int(decoder.vocab_size)
        self.blank_id = int(decoder.blank_id)

    def forward(
        self, x: torch.Tensor, x_lens: torch.Tensor, states: List[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """One streaming step.

        Args:
          x: (N, T, 80) features, T = decode_chunk_len + pad_length (a last chunk may be
            shorter, at least 23 frames).
          x_lens: (N,) int64 valid frames per row.
          states: 7 * num_stacks state tensors (stacked along their batch axes).

        Returns:
          (encoder_out (N, T', encoder_dim), encoder_out_lens (N,), new states).
        """
        return self.encoder.streaming_forward(x=x, x_lens=x_lens, states=states)

    @torch.jit.export
    def get_init_state(self) -> List[torch.Tensor]:
        """Zero states for one stream (batch size 1) on CPU."""
        return self.encoder.get_init_state(device=torch.device("cpu"))

    @torch.jit.export
    def run_decoder(self, y: torch.Tensor) -> torch.Tensor:
        """y: (N, context_size) int64 -> (N, joiner_dim) (decoder + decoder_proj)."""
        return self.joiner.decoder_proj(self.decoder(y, need_pad=False).squeeze(1))

    @torch.jit.export
    def run_joiner(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        """encoder_out: (N, encoder_dim) unprojected, decoder_out: (N, joiner_dim) -> logits."""
        return self.joiner(self.joiner.encoder_proj(encoder_out), decoder_out, project_input=False)


def encoder_state_names(num_stacks: int) -> List[str]:
    """State names in input order: ``cached_len_0..``, ``cached_avg_0..``, ..., ``cached_conv2_*``.

    (One name per stack within each kind.)
    """
    return [f"{kind}_{i}" for kind in STATE_NAMES for i in range(num_stacks)]


def encoder_io_names(num_stacks: int) -> Tuple[List[str], List[str]]:
    """ONNX input and output names of the streaming encoder (icefall's)."""
    states = encoder_state_names(num_stacks)
    return ["x"] + states, ["encoder_out"] + [f"new_{s}" for s in states]


def encoder_dynamic_axes(num_stacks: int) -> Dict[str, Dict[int, str]]:
    """Dynamic batch axes of every encoder input and output (``N``)."""
    axes: Dict[str, Dict[int, str]] = {"x": {0: "N"}, "encoder_out": {0: "N"}}
    states = encoder_state_names(num_stacks)
    batch_axis = dict(zip(STATE_NAMES, STATE_BATCH_DIMS))
    for name in states:
        axes[name] = {batch_axis[name.rsplit("_", 1)[0]]: "N"}
    for name in states:
        axes[f"new_{name}"] = axes[name]
    return axes


def encoder_meta_data(encoder: nn.Module, decode_chunk_len: int) -> Dict[str, str]:
    """Metadata for sherpa-onnx's streaming ``zipformer`` type, from a Zipformer's config.

    ``left_context_len`` per stack is ``decode_chunk_size * num_left_chunks // ds`` where
    ``decode_chunk_size = decode_chunk_len // 2`` frames at the 50 Hz embedding rate.
    """
    states = encoder.get_init_state(device=torch.device("cpu"))
    num_stacks = len(states) // len(STATE_NAMES)
    by_kind = {
        kind: states[k * num_stacks : (k + 1) * num_stacks] for k, kind in enumerate(STATE_NAMES)
    }
    return zipformer_streaming_meta_data(
        encoder_dims=[s.shape[2] for s in by_kind["cached_avg"]],
        attention_dims=[s.shape[3] for s in by_kind["cached_key"]],
        num_encoder_layers=[s.shape[0] for s in by_kind["cached_len"]],
        cnn_module_kernels=[s.shape[3] + 1 for s in by_kind["cached_conv1"]],
        left_context_len=[s.shape[1] for s in by_kind["cached_key"]],
        decode_chunk_len=decode_chunk_len,
        pad_length=PAD_LENGTH,
    )
