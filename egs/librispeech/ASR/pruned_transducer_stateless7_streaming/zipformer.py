"""Zipformer v1 streaming encoder, numerically equivalent to icefall's
``pruned_transducer_stateless7_streaming/zipformer.py`` (same module tree and state_dict).

Data flow (time-first (T, N, C) inside the encoder):

    features (N, T, 80) -> Conv2dSubsampling -> (T' = (T - 7) // 2 frames, 50 Hz)
    -> stacks i = 0..S-1, stack i running at 1/ds_i of the embedding rate
       (stack 0 is a ZipformerEncoder; the others downsample, encode, upsample and combine)
    -> AttentionDownsample by 2 -> (N, (T' + 1) // 2, C)

Training uses random chunk-wise causal attention masks; evaluation uses chunks of
``decode_chunk_size`` frames with ``num_left_chunks`` chunks of left context ("simulated
streaming"). ``streaming_forward`` processes one chunk at a time with 7 cached tensors per
stack (see :meth:`Zipformer.get_init_state`).
"""

import copy
import itertools
import logging
import math
import random
from typing import List, Optional, Set, Tuple, Union

import torch
from encoder_interface import EncoderInterface
from scaling import (
    ActivationBalancer,
    BasicNorm,
    DoubleSwish,
    Identity,
    ScaledConv1d,
    ScaledLinear,
    Whiten,
    penalize_abs_values_gt,
    softmax,
)
from torch import Tensor, nn

# The 7 kinds of streaming state, in the order of the state list, and the batch axis of each.
STATE_NAMES = (
    "cached_len",
    "cached_avg",
    "cached_key",
    "cached_val",
    "cached_val2",
    "cached_conv1",
    "cached_conv2",
)
STATE_BATCH_DIMS = (1, 1, 2, 2, 2, 1, 1)
_CPU = torch.device("cpu")


def _check_num_states(num_states: int) -> int:
    if num_states == 0 or num_states % len(STATE_NAMES) != 0:
        raise ValueError(
            f"a Zipformer state list has 7 tensors per encoder stack, got {num_states} tensors"
        )
    return num_states // len(STATE_NAMES)


def stack_states(state_list: List[List[Tensor]]) -> List[Tensor]:
    """Batch the streaming states of several utterances.

    Args:
      state_list: one state list per utterance (each as returned by ``get_init_state`` or
        ``streaming_forward``, usually with batch size 1).
    Returns:
      One state list whose tensors are concatenated along their batch axis (axis 1 for
      cached_len/avg/conv1/conv2, axis 2 for cached_key/val/val2). Inverse of
      :func:`unstack_states`.
    """
    if len(state_list) == 0:
        raise ValueError("stack_states needs at least one state list")
    num_encoders = _check_num_states(len(state_list[0]))
    return [
        torch.cat([states[j] for states in state_list], dim=STATE_BATCH_DIMS[j // num_encoders])
        for j in range(len(state_list[0]))
    ]


def unstack_states(states: List[Tensor]) -> List[List[Tensor]]:
    """Split batched streaming states into one state list per utterance (batch size 1 each).

    Inverse of :func:`stack_states`.
    """
    num_encoders = _check_num_states(len(states))
    batch_size = states[0].shape[1]
    per_utterance: List[List[Tensor]] = [[] for _ in range(batch_size)]
    for j, state in enumerate(states):
        pieces = state.chunk(batch_size, dim=STATE_BATCH_DIMS[j // num_encoders])
        for n in range(batch_size):
            per_utterance[n].append(pieces[n])
    return per_utterance


def make_key_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(N,) lengths -> (N, max_len) bool mask, True at padding frames."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


def make_chunk_attention_mask(
    size: int, chunk_size: int, num_left_chunks: int, device: torch.device
) -> Tensor:
    """(size, size) bool mask, True where query i must NOT attend to key j.

    Frame i may attend to every frame of its own chunk (``i // chunk_size``) and of the
    ``num_left_chunks`` chunks before it (all earlier chunks if ``num_left_chunks < 0``).
    This is ``~icefall.utils.subsequent_chunk_mask(size, chunk_size, num_left_chunks)``.
    """
    positions = torch.arange(size, device=device)
    chunk_index = torch.div(positions, chunk_size, rounding_mode="floor")
    end = (chunk_index + 1) * chunk_size
    if num_left_chunks < 0:
        start = torch.zeros_like(positions)
    else:
        start = ((chunk_index - num_left_chunks) * chunk_size).clamp(min=0)
    keys = positions.unsqueeze(0)
    allowed = (keys >= start.unsqueeze(1)) & (keys < end.unsqueeze(1))
    return ~allowed


class Zipformer(EncoderInterface):
    """Streaming Zipformer v1 encoder.

    Args:
      num_features: input feature dimension (80).
      output_downsampling_factor: final downsampling of the 50 Hz embedding (must be 2).
      encoder_dims: model dimension of each stack (non-decreasing).
      attention_dim: attention (query/key) dimension of each stack.
      encoder_unmasked_dims: dimensions of each stack never hit by training feature masks.
      zipformer_downsampling_factors: frame-rate divisor of each stack.
      nhead: attention heads of each stack.
      feedforward_dim: hidden size of the feed-forward modules of each stack.
      num_encoder_layers: layers of each stack.
      dropout: dropout rate.
      cnn_module_kernels: depthwise conv kernel size of each stack (odd).
      pos_dim: positional-query dimension per head.
      num_left_chunks: left chunks visible to attention (training and simulated streaming).
      short_chunk_threshold: above this fraction of the maximum, a training chunk draw means
        full-context attention.
      short_chunk_size: largest chunked-training chunk, in 50 Hz frames.
      decode_chunk_size: chunk size (50 Hz frames) of evaluation and real streaming.
      warmup_batches: length of the warm-up schedules, in batches.
    """

    def __init__(
        self,
        num_features: int,
        output_downsampling_factor: int = 2,
        encoder_dims: Tuple[int, ...] = (384, 384),
        attention_dim: Tuple[int, ...] = (256, 256),
        encoder_unmasked_dims: Tuple[int, ...] = (256, 256),
        zipformer_downsampling_factors: Tuple[int, ...] = (2, 4),
        nhead: Tuple[int, ...] = (8, 8),
        feedforward_dim: Tuple[int, ...] = (1536, 2048),
        num_encoder_layers: Tuple[int, ...] = (12, 12),
        dropout: float = 0.1,
        cnn_module_kernels: Tuple[int, ...] = (31, 31),
        pos_dim: int = 4,
        num_left_chunks: int = 4,
        short_chunk_threshold: float = 0.75,
        short_chunk_size: int = 50,
        decode_chunk_size: int = 16,
        warmup_batches: float = 4000.0,
    ) -> None:
        super().__init__()
        per_stack = (
            encoder_dims,
            attention_dim,
            encoder_unmasked_dims,
            zipformer_downsampling_factors,
            nhead,
            feedforward_dim,
            num_encoder_layers,
            cnn_module_kernels,
        )
        if len({len(values) for values in per_stack}) != 1:
            raise ValueError(f"per-stack settings must have equal lengths, got {per_stack}")
        if output_downsampling_factor != 2:
            raise ValueError(
                f"output_downsampling_factor must be 2, got {output_downsampling_factor}"
            )
        for unmasked, dim in zip(encoder_unmasked_dims, encoder_dims):
            if not 0 < unmasked <= dim:
                raise ValueError(f"encoder_unmasked_dims {unmasked} must be in (0, {dim}]")

        self.num_features = num_features
        self.encoder_dims = tuple(encoder_dims)
        self.attention_dims = tuple(attention_dim)
        self.encoder_unmasked_dims = tuple(encoder_unmasked_dims)
        self.zipformer_downsampling_factors = tuple(zipformer_downsampling_factors)
        self.num_encoder_layers = tuple(num_encoder_layers)
        self.cnn_module_kernels = tuple(cnn_module_kernels)
        self.output_downsampling_factor = output_downsampling_factor
        self.num_encoders = len(encoder_dims)

        self.num_left_chunks = num_left_chunks
        self.short_chunk_threshold = short_chunk_threshold
        self.short_chunk_size = short_chunk_size
        self.decode_chunk_size = decode_chunk_size
        self.left_context_len = decode_chunk_size * num_left_chunks

        # Written by set_batch_count(); drives the warm-up schedules.
        self.batch_count = 0
        self.warmup_end = warmup_batches

        self.encoder_embed = Conv2dSubsampling(num_features, encoder_dims[0], dropout=dropout)

        encoders = []
        for i in range(self.num_encoders):
            layer = ZipformerEncoderLayer(
                encoder_dims[i],
                attention_dim[i],
                nhead[i],
                feedforward_dim[i],
                dropout,
                cnn_module_kernels[i],
                pos_dim,
            )
            # Stack i warms up during the (i+1)-th of num_encoders+1 equal slices of the
            # warm-up period; the first slice lets the embedding learn something.
            encoder = ZipformerEncoder(
                layer,
                num_encoder_layers[i],
                dropout,
                warmup_begin=warmup_batches * (i + 1) / (self.num_encoders + 1),
                warmup_end=warmup_batches * (i + 2) / (self.num_encoders + 1),
            )
            if zipformer_downsampling_factors[i] != 1:
                encoder = DownsampledZipformerEncoder(
                    encoder,
                    input_dim=encoder_dims[i - 1] if i > 0 else encoder_dims[0],
                    output_dim=encoder_dims[i],
                    downsample=zipformer_downsampling_factors[i],
                )
            encoders.append(encoder)
        self.encoders = nn.ModuleList(encoders)

        self.skip_layers, skip_modules = self._make_skip_modules()
        self.skip_modules = nn.ModuleList(skip_modules)

        self.downsample_output = AttentionDownsample(
            encoder_dims[-1], encoder_dims[-1], downsample=output_downsampling_factor
        )

    def _make_skip_modules(self) -> Tuple[List[Optional[int]], List[nn.Module]]:
        """Skip connections between stacks.

        Stack i (i >= 2) whose predecessor runs at a lower frame rate (larger factor) gets,
        as extra input, the output of the latest stack j <= i - 2 with factor <= its own
        (or stack 0), mixed in by a SimpleCombiner. For factors (1, 2, 4, 8, 2) only stack 4
        combines the outputs of stacks 1 and 3.

        Returns:
          (skip_layers, skip_modules): per stack, the source stack j or None, and the combiner
          (an identity placeholder where there is none).
        """
        factors = self.zipformer_downsampling_factors
        skip_layers: List[Optional[int]] = []
        skip_modules: List[nn.Module] = []
        for i in range(len(factors)):
            source = None
            if i >= 2 and factors[i - 1] > factors[i]:
                source = next(j for j in range(i - 2, -1, -1) if factors[j] <= factors[i] or j == 0)
            skip_layers.append(source)
            if source is None:
                skip_modules.append(SimpleCombinerIdentity())
            else:
                logging.info(
                    f"Encoder stack {i} (downsampling factor {factors[i]}) combines the outputs "
                    f"of stacks {source} and {i - 1} (factors {factors[source]} and "
                    f"{factors[i - 1]})"
                )
                skip_modules.append(
                    SimpleCombiner(
                        self.encoder_dims[source],
                        self.encoder_dims[i - 1],
                        min_weight=(0.0, 0.25),
                    )
                )
        return skip_layers, skip_modules

    def _get_layer_skip_dropout_prob(self) -> float:
        """Probability of dropping a skip connection: 0.5 -> 0.025 over the warm-up."""
        if not self.training:
            return 0.0
        min_dropout_prob = 0.025
        if self.batch_count > self.warmup_end:
            return min_dropout_prob
        return 0.5 - (self.batch_count / self.warmup_end) * (0.5 - min_dropout_prob)

    def get_feature_masks(self, x: Tensor) -> List[Union[Tensor, float]]:
        """Per-stack multiplicative feature masks ("dimension dropout").

        In training, on a random 15% of frames (drawn at the coarsest frame rate and repeated
        to every stack's rate so that the stacks agree), channels >= encoder_unmasked_dims[i]
        are zeroed. In eval every mask is 1.0.

        Args:
          x: (T, N, encoder_dims[0]) embedding, for the shape, dtype and device.
        Returns:
          one mask per stack, of shape (ceil(T / ds_i), N, encoder_dims[i]), or 1.0.
        """
        masks: List[Union[Tensor, float]] = []
        if torch.jit.is_scripting() or not self.training:
            for _ in range(self.num_encoders):
                masks.append(1.0)
            return masks
        num_frames0, batch_size, _ = x.shape
        max_factor = max(self.zipformer_downsampling_factors)
        num_frames_max = num_frames0 + max_factor - 1
        frame_mask_max = (torch.rand(num_frames_max, batch_size, 1, device=x.device) > 0.15).to(
            x.dtype
        )
        for i, ds in enumerate(self.zipformer_downsampling_factors):
            repeat = max_factor // ds
            frame_mask = frame_mask_max.repeat_interleave(repeat, dim=0)
            num_frames = (num_frames0 + ds - 1) // ds
            mask = torch.ones(
                num_frames, batch_size, self.encoder_dims[i], dtype=x.dtype, device=x.device
            )
            mask[:, :, self.encoder_unmasked_dims[i] :] *= frame_mask[:num_frames]
            masks.append(mask)
        return masks

    def _random_chunk_size(self, num_frames: int) -> int:
        """Training chunk size (50 Hz frames): full context (num_frames) for about a quarter
        of the draws, otherwise a multiple of the largest downsampling factor up to
        ``short_chunk_size``."""
        max_factor = max(self.zipformer_downsampling_factors)
        max_len = num_frames // max_factor
        if max_len <= 1:
            return num_frames
        draw = int(torch.randint(1, max_len, (1,)).item())
        if draw > max_len * self.short_chunk_threshold:
            return num_frames
        short_chunk = max(1, self.short_chunk_size // max_factor)
        return (draw % short_chunk + 1) * max_factor

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """Full-utterance forward with chunk-wise attention masks.

        Args:
          x: (N, T, num_features) features, padded (T >= 9).
          x_lens: (N,) int64 valid frames per utterance.
        Returns:
          (encoder_out, encoder_out_lens): (N, ((T - 7) // 2 + 1) // 2, encoder_dims[-1])
          and (N,) int64 lengths ``(((x_lens - 7) >> 1) + 1) >> 1``.
        """
        x = self.encoder_embed(x).permute(1, 0, 2)  # (T', N, C)
        num_frames = x.size(0)
        lengths = (x_lens - 7) >> 1
        if int(lengths.max()) > num_frames:
            raise ValueError(
                f"x_lens (max {int(x_lens.max())}) exceed the {num_frames} embedding frames "
                "computed from the padded input"
            )
        padding_mask = make_key_padding_mask(lengths, num_frames)

        if torch.jit.is_scripting():
            chunk_size = self.decode_chunk_size
        elif self.training:
            chunk_size = self._random_chunk_size(num_frames)
        else:
            chunk_size = self.decode_chunk_size
        if not self.training:
            for ds in self.zipformer_downsampling_factors:
                if chunk_size % ds != 0:
                    raise ValueError(
                        f"decode_chunk_size {chunk_size} must be divisible by every "
                        f"downsampling factor {self.zipformer_downsampling_factors}"
                    )
        attn_mask = make_chunk_attention_mask(
            num_frames, chunk_size, self.num_left_chunks, device=x.device
        )

        feature_masks = self.get_feature_masks(x)
        outputs: List[Tensor] = []
        for i, (module, skip_module) in enumerate(zip(self.encoders, self.skip_modules)):
            ds = self.zipformer_downsampling_factors[i]
            source = self.skip_layers[i]
            if source is not None:
                if torch.jit.is_scripting():
                    x = skip_module(outputs[source], x)
                elif not self.training or random.random() > self._get_layer_skip_dropout_prob():
                    x = skip_module(outputs[source], x)
            x = module(
                x,
                feature_mask=feature_masks[i],
                src_key_padding_mask=padding_mask[:, ::ds],
                attn_mask=attn_mask[::ds, ::ds],
            )
            outputs.append(x)

        x = self.downsample_output(x)
        lengths = (lengths + 1) >> 1
        return x.permute(1, 0, 2), lengths

    @torch.jit.export
    def streaming_forward(
        self, x: Tensor, x_lens: Tensor, states: List[Tensor]
    ) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """Process one chunk of features with cached left context.

        Args:
          x: (N, T, num_features) chunk; T = decode_chunk_len + 7 (the 7 frames overlap the
            previous chunk, since the convolutional embedding keeps no cache).
          x_lens: (N,) int64 valid frames of each row of ``x``.
          states: 7 * num_encoders tensors (see :meth:`get_init_state`).
        Returns:
          (encoder_out (N, ((T - 7) // 2 + 1) // 2, encoder_dims[-1]), encoder_out_lens (N,),
          new_states in the same layout as ``states``).
        """
        num_encoders = self.num_encoders
        if len(states) != 7 * num_encoders:
            raise ValueError(f"expected {7 * num_encoders} state tensors, got {len(states)}")

        x = self.encoder_embed(x).permute(1, 0, 2)  # (T', N, C)
        lengths = (x_lens - 7) >> 1

        outputs: List[Tensor] = []
        new_states: List[List[Tensor]] = [[] for _ in range(7)]
        for i, (module, skip_module) in enumerate(zip(self.encoders, self.skip_modules)):
            source = self.skip_layers[i]
            if source is not None:
                x = skip_module(outputs[source], x)
            result = module.streaming_forward(
                x,
                cached_len=states[i],
                cached_avg=states[num_encoders + i],
                cached_key=states[2 * num_encoders + i],
                cached_val=states[3 * num_encoders + i],
                cached_val2=states[4 * num_encoders + i],
                cached_conv1=states[5 * num_encoders + i],
                cached_conv2=states[6 * num_encoders + i],
            )
            x = result[0]
            outputs.append(x)
            for kind in range(7):
                new_states[kind].append(result[kind + 1])

        x = self.downsample_output(x)
        lengths = (lengths + 1) >> 1
        flat_states: List[Tensor] = []
        for kind_states in new_states:
            flat_states.extend(kind_states)
        return x.permute(1, 0, 2), lengths, flat_states

    @torch.jit.export
    def get_init_state(self, device: torch.device = _CPU) -> List[Tensor]:
        """Zero streaming states for one utterance (batch size 1).

        Returns 7 * num_encoders tensors: for each kind, in the order cached_len, cached_avg,
        cached_key, cached_val, cached_val2, cached_conv1, cached_conv2, one tensor per stack
        i (L = layers of stack i, D = its dim, A = its attention dim, K = its conv kernel,
        LC = decode_chunk_size * num_left_chunks // ds_i):
        cached_len (L, 1) int64; cached_avg (L, 1, D); cached_key (L, LC, 1, A);
        cached_val, cached_val2 (L, LC, 1, A // 2); cached_conv1, cached_conv2 (L, 1, D, K - 1).
        """
        left_context_len = self.decode_chunk_size * self.num_left_chunks
        states: List[List[Tensor]] = [[] for _ in range(7)]
        for i, encoder in enumerate(self.encoders):
            num_layers = encoder.num_layers
            d_model = encoder.d_model
            attention_dim = encoder.attention_dim
            context = left_context_len // self.zipformer_downsampling_factors[i]
            conv_context = encoder.cnn_module_kernel - 1
            states[0].append(torch.zeros(num_layers, 1, dtype=torch.int64, device=device))
            states[1].append(torch.zeros(num_layers, 1, d_model, device=device))
            states[2].append(torch.zeros(num_layers, context, 1, attention_dim, device=device))
            states[3].append(torch.zeros(num_layers, context, 1, attention_dim // 2, device=device))
            states[4].append(torch.zeros(num_layers, context, 1, attention_dim // 2, device=device))
            states[5].append(torch.zeros(num_layers, 1, d_model, conv_context, device=device))
            states[6].append(torch.zeros(num_layers, 1, d_model, conv_context, device=device))
        flat_states: List[Tensor] = []
        for kind_states in states:
            flat_states.extend(kind_states)
        return flat_states


class ZipformerEncoderLayer(nn.Module):
    """One Zipformer layer (time-first tensors).

    ``src + FF1 -> + pooling -> + self-attention -> + conv1 -> + FF2 -> + attention with
    re-used weights (forward2) -> + conv2 -> + FF3 -> BasicNorm``, then the output is
    ``src_orig + (out - src_orig) * bypass_scale``.

    Args:
      d_model: model dimension.
      attention_dim: query/key dimension (values use attention_dim // 2).
      nhead: attention heads.
      feedforward_dim: hidden size of the three feed-forward modules.
      dropout: dropout in the feed-forward modules.
      cnn_module_kernel: depthwise kernel size of the causal conv modules.
      pos_dim: positional-query dimension per head.
    """

    def __init__(
        self,
        d_model: int,
        attention_dim: int,
        nhead: int,
        feedforward_dim: int = 2048,
        dropout: float = 0.1,
        cnn_module_kernel: int = 31,
        pos_dim: int = 4,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.attention_dim = attention_dim
        self.cnn_module_kernel = cnn_module_kernel
        # Written by set_batch_count().
        self.batch_count = 0
        # Layer-drop warm-up window, set by ZipformerEncoder.
        self.warmup_begin = 0.0
        self.warmup_end = 0.0

        self.self_attn = RelPositionMultiheadAttention(
            d_model, attention_dim, nhead, pos_dim, dropout=0.0
        )
        self.pooling = PoolingModule(d_model)
        self.feed_forward1 = FeedforwardModule(d_model, feedforward_dim, dropout)
        self.feed_forward2 = FeedforwardModule(d_model, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(d_model, feedforward_dim, dropout)
        self.conv_module1 = ConvolutionModule(d_model, cnn_module_kernel)
        self.conv_module2 = ConvolutionModule(d_model, cnn_module_kernel)
        self.norm_final = BasicNorm(d_model)
        self.bypass_scale = nn.Parameter(torch.tensor(0.5))
        # Keeps the layer output close to zero-median.
        self.balancer = ActivationBalancer(
            d_model, channel_dim=-1, min_positive=0.45, max_positive=0.55, max_abs=6.0
        )
        self.whiten = Whiten(num_groups=1, whitening_limit=5.0, prob=(0.025, 0.25), grad_scale=0.01)

    def get_bypass_scale(self) -> Tensor:
        """``bypass_scale``; in training (90% of calls) clamped to [c, 1] where c goes
        0.75 -> 0.25 over the first 20000 batches."""
        if torch.jit.is_scripting() or not self.training:
            return self.bypass_scale
        if random.random() < 0.1:
            return self.bypass_scale
        warmup_period = 20000.0
        initial_clamp_min = 0.75
        final_clamp_min = 0.25
        if self.batch_count > warmup_period:
            clamp_min = final_clamp_min
        else:
            progress = self.batch_count / warmup_period
            clamp_min = initial_clamp_min - progress * (initial_clamp_min - final_clamp_min)
        return self.bypass_scale.clamp(min=clamp_min, max=1.0)

    def get_dynamic_dropout_rate(self) -> float:
        """Probability of skipping the pooling, attention and conv modules in training:
        0.2 for the first 2000 batches, then 0 (icefall's schedule)."""
        if torch.jit.is_scripting() or not self.training:
            return 0.0
        if self.batch_count > 2000.0:
            return 0.0
        return 0.2

    def forward(
        self,
        src: Tensor,
        pos_emb: Tensor,
        attn_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
          src: (T, N, d_model).
          pos_emb: (1, 2T - 1, d_model) relative positional embedding.
          attn_mask: (T, T) bool, True where attention is not allowed.
          src_key_padding_mask: (N, T) bool, True at padding frames.
        Returns:
          (T, N, d_model).
        """
        src_orig = src
        src = src + self.feed_forward1(src)
        if torch.jit.is_scripting():
            src = src + self.pooling(src, src_key_padding_mask=src_key_padding_mask)
            attn_out, attn_weights = self.self_attn(
                src, pos_emb=pos_emb, attn_mask=attn_mask, key_padding_mask=src_key_padding_mask
            )
            src = src + attn_out
            src = src + self.conv_module1(src, src_key_padding_mask=src_key_padding_mask)
            src = src + self.feed_forward2(src)
            src = src + self.self_attn.forward2(src, attn_weights)
            src = src + self.conv_module2(src, src_key_padding_mask=src_key_padding_mask)
        else:
            dynamic_dropout = self.get_dynamic_dropout_rate()
            if random.random() >= dynamic_dropout:
                src = src + self.pooling(src, src_key_padding_mask=src_key_padding_mask)
            use_self_attn = random.random() >= dynamic_dropout
            attn_weights = None
            if use_self_attn:
                attn_out, attn_weights = self.self_attn(
                    src,
                    pos_emb=pos_emb,
                    attn_mask=attn_mask,
                    key_padding_mask=src_key_padding_mask,
                )
                src = src + attn_out
            if random.random() >= dynamic_dropout:
                src = src + self.conv_module1(src, src_key_padding_mask=src_key_padding_mask)
            src = src + self.feed_forward2(src)
            if attn_weights is not None:
                src = src + self.self_attn.forward2(src, attn_weights)
            if random.random() >= dynamic_dropout:
                src = src + self.conv_module2(src, src_key_padding_mask=src_key_padding_mask)
        src = src + self.feed_forward3(src)
        src = self.norm_final(self.balancer(src))
        src = src_orig + (src - src_orig) * self.get_bypass_scale()
        return self.whiten(src)

    def streaming_forward(
        self,
        src: Tensor,
        pos_emb: Tensor,
        cached_len: Tensor,
        cached_avg: Tensor,
        cached_key: Tensor,
        cached_val: Tensor,
        cached_val2: Tensor,
        cached_conv1: Tensor,
        cached_conv2: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One chunk through the layer.

        Args:
          src: (T, N, d_model) chunk.
          pos_emb: (1, LC + 2T - 1, d_model).
          cached_len: (N,) int64 frames seen so far; cached_avg: (N, d_model) their mean.
          cached_key: (LC, N, A); cached_val, cached_val2: (LC, N, A // 2).
          cached_conv1, cached_conv2: (N, d_model, kernel - 1).
        Returns:
          (output (T, N, d_model), then the 7 updated caches in the argument order).
        """
        src_orig = src
        src = src + self.feed_forward1(src)
        pooled, cached_len, cached_avg = self.pooling.streaming_forward(
            src, cached_len=cached_len, cached_avg=cached_avg
        )
        src = src + pooled
        attn_out, attn_weights, cached_key, cached_val = self.self_attn.streaming_forward(
            src, pos_emb=pos_emb, cached_key=cached_key, cached_val=cached_val
        )
        src = src + attn_out
        conv_out, cached_conv1 = self.conv_module1.streaming_forward(src, cache=cached_conv1)
        src = src + conv_out
        src = src + self.feed_forward2(src)
        attn_out, cached_val2 = self.self_attn.streaming_forward2(
            src, attn_weights, cached_val=cached_val2
        )
        src = src + attn_out
        conv_out, cached_conv2 = self.conv_module2.streaming_forward(src, cache=cached_conv2)
        src = src + conv_out
        src = src + self.feed_forward3(src)
        src = self.norm_final(self.balancer(src))
        src = src_orig + (src - src_orig) * self.bypass_scale
        return (
            src,
            cached_len,
            cached_avg,
            cached_key,
            cached_val,
            cached_val2,
            cached_conv1,
            cached_conv2,
        )


class ZipformerEncoder(nn.Module):
    """A stack of ``num_layers`` deep copies of ``encoder_layer`` sharing one relative
    positional encoding, with layer drop during training.

    Args:
      encoder_layer: the layer to copy.
      num_layers: number of layers.
      dropout: dropout of the positional embedding.
      warmup_begin, warmup_end: batch counts over which layer drop decays 0.5 -> 0.05; the
        window is split evenly across the layers.
    """

    def __init__(
        self,
        encoder_layer: ZipformerEncoderLayer,
        num_layers: int,
        dropout: float,
        warmup_begin: float,
        warmup_end: float,
    ) -> None:
        super().__init__()
        if not 0 <= warmup_begin <= warmup_end:
            raise ValueError(f"bad warm-up window ({warmup_begin}, {warmup_end})")
        # Written by set_batch_count(); 0 also means "inference".
        self.batch_count = 0
        self.warmup_begin = warmup_begin
        self.warmup_end = warmup_end
        # Seeds the RNG that decides how many layers to drop, shared by all DDP workers.
        self.module_seed = int(torch.randint(0, 1000, (), device="cpu").item())

        self.encoder_pos = RelPositionalEncoding(encoder_layer.d_model, dropout)
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.d_model = encoder_layer.d_model
        self.attention_dim = encoder_layer.attention_dim
        self.cnn_module_kernel = encoder_layer.cnn_module_kernel

        delta = (warmup_end - warmup_begin) / num_layers
        for i, layer in enumerate(self.layers):
            layer.warmup_begin = warmup_begin + i * delta
            layer.warmup_end = warmup_begin + (i + 1) * delta

    def _layer_drop_prob(self, layer_index: int) -> float:
        layer = self.layers[layer_index]
        initial_prob, final_prob = 0.5, 0.05
        if self.batch_count == 0:
            return 0.0
        if self.batch_count < layer.warmup_begin:
            return initial_prob
        if self.batch_count > layer.warmup_end:
            return final_prob
        # icefall divides by warmup_end (not the window length); kept for equivalence.
        t = (self.batch_count - layer.warmup_begin) / layer.warmup_end
        return initial_prob + t * (final_prob - initial_prob)

    def get_layers_to_drop(self, rnd_seed: int) -> Set[int]:
        """Indexes of the layers to skip in this training step (empty in eval).

        The number of dropped layers comes from an RNG seeded by the batch count and
        ``module_seed`` (identical across DDP workers); which layers, from ``rnd_seed``.
        """
        if not self.training:
            return set()
        probs = [self._layer_drop_prob(i) for i in range(self.num_layers)]
        total = sum(probs)
        shared_rng = random.Random(self.batch_count + self.module_seed)
        independent_rng = random.Random(rnd_seed)
        num_to_drop = int(total) + int(shared_rng.random() < (total - int(total)))
        order = list(range(self.num_layers))
        independent_rng.shuffle(order)
        dropped: Set[int] = set()
        if num_to_drop > 0:
            for layer in itertools.cycle(order):
                if independent_rng.random() < probs[layer]:
                    dropped.add(layer)
                if len(dropped) == num_to_drop:
                    break
        if shared_rng.random() < 0.005:
            logging.info(
                f"warmup_begin={self.warmup_begin:.1f}, warmup_end={self.warmup_end:.1f}, "
                f"batch_count={self.batch_count:.1f}, num_to_drop={num_to_drop}, "
                f"layers_to_drop={dropped}"
            )
        return dropped

    def forward(
        self,
        src: Tensor,
        feature_mask: Union[Tensor, float] = 1.0,
        attn_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
          src: (T, N, d_model).
          feature_mask: multiplies the input and every layer output; broadcastable to src.
          attn_mask: (T, T) bool, True where attention is not allowed.
          src_key_padding_mask: (N, T) bool, True at padding frames.
        Returns:
          (T, N, d_model).
        """
        pos_emb = self.encoder_pos(src)
        if torch.jit.is_scripting():
            # Scripted models are for inference, where the feature mask is always 1.0.
            output = src
            for layer in self.layers:
                output = layer(
                    output,
                    pos_emb,
                    attn_mask=attn_mask,
                    src_key_padding_mask=src_key_padding_mask,
                )
        else:
            output = src * feature_mask
            layers_to_drop = self.get_layers_to_drop(src.numel() + random.randint(0, 1000))
            for i, layer in enumerate(self.layers):
                if i in layers_to_drop:
                    continue
                output = layer(
                    output,
                    pos_emb,
                    attn_mask=attn_mask,
                    src_key_padding_mask=src_key_padding_mask,
                )
                output = output * feature_mask
        return output

    def streaming_forward(
        self,
        src: Tensor,
        cached_len: Tensor,
        cached_avg: Tensor,
        cached_key: Tensor,
        cached_val: Tensor,
        cached_val2: Tensor,
        cached_conv1: Tensor,
        cached_conv2: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One chunk through all layers.

        Args:
          src: (T, N, d_model).
          cached_len: (L, N) int64; cached_avg: (L, N, d_model);
          cached_key: (L, LC, N, A); cached_val, cached_val2: (L, LC, N, A // 2);
          cached_conv1, cached_conv2: (L, N, d_model, kernel - 1).
        Returns:
          (output (T, N, d_model), then the 7 updated caches with the argument shapes).
        """
        if cached_len.size(0) != self.num_layers:
            raise ValueError(
                f"caches are for {cached_len.size(0)} layers, the stack has {self.num_layers}"
            )
        pos_emb = self.encoder_pos(src, cached_key.shape[1])
        output = src
        new_caches: List[List[Tensor]] = [[] for _ in range(7)]
        for i, layer in enumerate(self.layers):
            result = layer.streaming_forward(
                output,
                pos_emb,
                cached_len=cached_len[i],
                cached_avg=cached_avg[i],
                cached_key=cached_key[i],
                cached_val=cached_val[i],
                cached_val2=cached_val2[i],
                cached_conv1=cached_conv1[i],
                cached_conv2=cached_conv2[i],
            )
            output = result[0]
            for kind in range(7):
                new_caches[kind].append(result[kind + 1])
        return (
            output,
            torch.stack(new_caches[0], dim=0),
            torch.stack(new_caches[1], dim=0),
            torch.stack(new_caches[2], dim=0),
            torch.stack(new_caches[3], dim=0),
            torch.stack(new_caches[4], dim=0),
            torch.stack(new_caches[5], dim=0),
            torch.stack(new_caches[6], dim=0),
        )


class DownsampledZipformerEncoder(nn.Module):
    """A ZipformerEncoder run at 1/downsample of the input frame rate: AttentionDownsample,
    encoder, SimpleUpsample, truncation to the input length, then a SimpleCombiner of the
    input and the result.

    Args:
      encoder: the ZipformerEncoder to wrap.
      input_dim: channels of the input.
      output_dim: channels of the encoder and of the output (>= input_dim).
      downsample: frame-rate divisor.
    """

    def __init__(
        self, encoder: ZipformerEncoder, input_dim: int, output_dim: int, downsample: int
    ) -> None:
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = AttentionDownsample(input_dim, output_dim, downsample)
        self.encoder = encoder
        self.num_layers = encoder.num_layers
        self.d_model = encoder.d_model
        self.attention_dim = encoder.attention_dim
        self.cnn_module_kernel = encoder.cnn_module_kernel
        self.upsample = SimpleUpsample(output_dim, downsample)
        self.out_combiner = SimpleCombiner(input_dim, output_dim, min_weight=(0.0, 0.25))

    def forward(
        self,
        src: Tensor,
        feature_mask: Union[Tensor, float] = 1.0,
        attn_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
          src: (T, N, input_dim).
          feature_mask, attn_mask, src_key_padding_mask: as for ZipformerEncoder, already at
            the reduced frame rate (ceil(T / downsample) frames).
        Returns:
          (T, N, output_dim).
        """
        src_orig = src
        src = self.downsample(src)
        src = self.encoder(
            src,
            feature_mask=feature_mask,
            attn_mask=attn_mask,
            src_key_padding_mask=src_key_padding_mask,
        )
        src = self.upsample(src)[: src_orig.shape[0]]
        return self.out_combiner(src_orig, src)

    def streaming_forward(
        self,
        src: Tensor,
        cached_len: Tensor,
        cached_avg: Tensor,
        cached_key: Tensor,
        cached_val: Tensor,
        cached_val2: Tensor,
        cached_conv1: Tensor,
        cached_conv2: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Streaming version of :meth:`forward`; caches as for ZipformerEncoder, at the
        reduced frame rate. Returns (output (T, N, output_dim), 7 updated caches)."""
        src_orig = src
        src = self.downsample(src)
        (
            src,
            cached_len,
            cached_avg,
            cached_key,
            cached_val,
            cached_val2,
            cached_conv1,
            cached_conv2,
        ) = self.encoder.streaming_forward(
            src,
            cached_len=cached_len,
            cached_avg=cached_avg,
            cached_key=cached_key,
            cached_val=cached_val,
            cached_val2=cached_val2,
            cached_conv1=cached_conv1,
            cached_conv2=cached_conv2,
        )
        src = self.upsample(src)[: src_orig.shape[0]]
        return (
            self.out_combiner(src_orig, src),
            cached_len,
            cached_avg,
            cached_key,
            cached_val,
            cached_val2,
            cached_conv1,
            cached_conv2,
        )


class AttentionDownsample(nn.Module):
    """Downsample time by a weighted sum over each group of ``downsample`` frames, the weights
    being a softmax of the frames' dot products with a learned query. Output channels beyond
    ``in_channels`` come from a linear projection of the concatenated group.

    Args:
      in_channels, out_channels: channel counts (out_channels >= in_channels for the extra
        projection to exist).
      downsample: group size.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(in_channels) * (in_channels**-0.5))
        if out_channels > in_channels:
            self.extra_proj = nn.Linear(
                in_channels * downsample, out_channels - in_channels, bias=False
            )
        else:
            self.extra_proj = None
        self.downsample = downsample

    def forward(self, src: Tensor) -> Tensor:
        """src: (T, N, in_channels) -> (ceil(T / downsample), N, out_channels). When T is not
        a multiple of downsample, the last frame is repeated to fill the final group."""
        seq_len, batch_size, in_channels = src.shape
        ds = self.downsample
        d_seq_len = (seq_len + ds - 1) // ds
        pad = d_seq_len * ds - seq_len
        if pad > 0:
            src = torch.cat((src, src[seq_len - 1 :].expand(pad, batch_size, in_channels)), dim=0)
        src = src.reshape(d_seq_len, ds, batch_size, in_channels)
        scores = (src * self.query).sum(dim=-1, keepdim=True)
        if not torch.jit.is_scripting():
            if self.training:
                scores = penalize_abs_values_gt(scores, limit=10.0, penalty=1.0e-04)
        weights = scores.softmax(dim=1)
        ans = (src * weights).sum(dim=1)
        if self.extra_proj is not None:
            grouped = src.permute(0, 2, 1, 3).reshape(d_seq_len, batch_size, ds * in_channels)
            ans = torch.cat((ans, self.extra_proj(grouped)), dim=2)
        return ans


class SimpleUpsample(nn.Module):
    """Repeat each frame ``upsample`` times and add a learned per-position bias."""

    def __init__(self, num_channels: int, upsample: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(upsample, num_channels) * 0.01)

    def forward(self, src: Tensor) -> Tensor:
        """src: (T, N, C) -> (T * upsample, N, C)."""
        upsample = self.bias.shape[0]
        seq_len, batch_size, num_channels = src.shape
        src = src.unsqueeze(1).expand(seq_len, upsample, batch_size, num_channels)
        src = src + self.bias.unsqueeze(1)
        return src.reshape(seq_len * upsample, batch_size, num_channels)


class SimpleCombinerIdentity(nn.Module):
    """Placeholder combiner for stacks without a skip connection: returns ``src1``."""

    def forward(self, src1: Tensor, src2: Tensor) -> Tensor:
        return src1


class SimpleCombiner(nn.Module):
    """``weight1 * src1 + (1 - weight1) * src2`` with a learned scalar ``weight1`` (init 0).

    ``src1`` (..., dim1) is zero-padded to dim2 channels. In training, with probability
    0.25, weight1 is clamped to [min_weight[0], 1 - min_weight[1]].
    """

    def __init__(self, dim1: int, dim2: int, min_weight: Tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        if dim2 < dim1:
            raise ValueError(f"SimpleCombiner needs dim2 >= dim1, got {dim2} < {dim1}")
        self.weight1 = nn.Parameter(torch.zeros(()))
        self.min_weight = min_weight

    def forward(self, src1: Tensor, src2: Tensor) -> Tensor:
        """src1: (..., dim1), src2: (..., dim2) -> (..., dim2)."""
        weight1 = self.weight1
        if not torch.jit.is_scripting():
            if self.training and random.random() < 0.25 and self.min_weight != (0.0, 0.0):
                weight1 = weight1.clamp(min=self.min_weight[0], max=1.0 - self.min_weight[1])
        src1 = src1 * weight1
        src2 = src2 * (1.0 - weight1)
        extra_dims = src2.shape[-1] - src1.shape[-1]
        if extra_dims > 0:
            src1 = nn.functional.pad(src1, (0, extra_dims))
        return src1 + src2


class RelPositionalEncoding(nn.Module):
    """Sinusoidal relative positional embeddings (Transformer-XL style).

    The table holds positions +(L-1) .. 0 .. -(L-1) (positive = key in the past); for T query
    frames and ``left_context_len`` cached frames, :meth:`forward` returns the slice for
    relative positions from (left_context_len + T - 1) down to -(T - 1).

    Args:
      d_model: embedding dimension (even).
      dropout_rate: dropout applied to the returned embedding.
      max_len: table length computed at construction (grown on demand).
    """

    def __init__(self, d_model: int, dropout_rate: float, max_len: int = 5000) -> None:
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout_rate)
        self.pe = self._make_table(max_len, torch.device("cpu"), torch.float32)

    def _make_table(self, length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(1, 2 * length - 1, d_model) table, row k for relative position length - 1 - k."""
        position = torch.arange(0, length, dtype=torch.float32, device=device).unsqueeze(1)
        div_term = torch.exp(
            torch.arange(0, self.d_model, 2, dtype=torch.float32, device=device)
            * -(math.log(10000.0) / self.d_model)
        )
        pe_positive = torch.zeros(length, self.d_model, device=device)
        pe_negative = torch.zeros(length, self.d_model, device=device)
        pe_positive[:, 0::2] = torch.sin(position * div_term)
        pe_positive[:, 1::2] = torch.cos(position * div_term)
        pe_negative[:, 0::2] = torch.sin(-1 * position * div_term)
        pe_negative[:, 1::2] = torch.cos(-1 * position * div_term)
        table = torch.cat([torch.flip(pe_positive, [0]), pe_negative[1:]], dim=0).unsqueeze(0)
        return table.to(device=device, dtype=dtype)

    def extend_pe(self, x: Tensor, left_context_len: int = 0) -> None:
        """Make sure the table covers ``x.size(0) + left_context_len`` positions each way and
        has x's dtype and device."""
        needed = x.size(0) + left_context_len
        if self.pe.size(1) < 2 * needed - 1:
            self.pe = self._make_table(needed, x.device, x.dtype)
        elif self.pe.dtype != x.dtype or str(self.pe.device) != str(x.device):
            self.pe = self.pe.to(dtype=x.dtype, device=x.device)

    def forward(self, x: Tensor, left_context_len: int = 0) -> Tensor:
        """x: (T, N, ...) -> (1, left_context_len + 2T - 1, d_model)."""
        self.extend_pe(x, left_context_len)
        center = self.pe.size(1) // 2
        x_size_left = x.size(0) + left_context_len
        pos_emb = self.pe[:, center - x_size_left + 1 : center + x.size(0)]
        return self.dropout(pos_emb)


def _relative_to_absolute(pos_weights: Tensor, num_keys: int) -> Tensor:
    """Turn scores indexed by relative position into scores indexed by key.

    Args:
      pos_weights: (N, H, T, P) with P = T + num_keys - 1; column p belongs to relative
        position num_keys - 1 - p (the layout of RelPositionalEncoding's output).
      num_keys: number of keys S; the T queries are the last T of the S key positions
        (S - T cached keys come first), so query i and key j are (S - T) + i - j apart.
    Returns:
      (N, H, T, S) with out[..., i, j] = pos_weights[..., i, T - 1 - i + j].
    """
    batch_size, num_heads, time1, n = pos_weights.shape
    if torch.jit.is_tracing():
        rows = torch.arange(start=time1 - 1, end=-1, step=-1, device=pos_weights.device)
        cols = torch.arange(num_keys, device=pos_weights.device)
        indexes = rows.repeat(batch_size * num_heads).unsqueeze(-1) + cols
        gathered = torch.gather(pos_weights.reshape(-1, n), dim=1, index=indexes)
        return gathered.reshape(batch_size, num_heads, time1, num_keys)
    pos_weights = pos_weights.contiguous()
    stride_t = pos_weights.stride(2)
    stride_p = pos_weights.stride(3)
    return pos_weights.as_strided(
        (batch_size, num_heads, time1, num_keys),
        (pos_weights.stride(0), pos_weights.stride(1), stride_t - stride_p, stride_p),
        storage_offset=pos_weights.storage_offset() + stride_p * (time1 - 1),
    )


class RelPositionMultiheadAttention(nn.Module):
    """Multi-head self-attention with relative positions and a second, weight-sharing pass.

    ``in_proj`` gives queries and keys (attention_dim each), values (attention_dim // 2) and
    positional queries (num_heads * pos_dim); scores are q.k plus the positional query times
    ``linear_pos(pos_emb)`` (no 1/sqrt(d) scaling: it is absorbed in the initialisation).
    :meth:`forward2` re-uses the attention weights with values from ``in_proj2``.

    Args:
      embed_dim: model dimension.
      attention_dim: total query/key dimension (multiple of num_heads; head_dim even).
      num_heads: heads.
      pos_dim: positional-query dimension per head.
      dropout: dropout on the attention weights.
    """

    def __init__(
        self,
        embed_dim: int,
        attention_dim: int,
        num_heads: int,
        pos_dim: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.attention_dim = attention_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.head_dim = attention_dim // num_heads
        self.pos_dim = pos_dim
        if self.head_dim * num_heads != attention_dim or self.head_dim % 2 != 0:
            raise ValueError(
                f"attention_dim {attention_dim} must be num_heads ({num_heads}) times an even "
                "head dimension"
            )
        in_proj_dim = 2 * attention_dim + attention_dim // 2 + pos_dim * num_heads
        # initial_scale head_dim ** -0.25 on both q and k replaces the usual 1/sqrt(head_dim).
        self.in_proj = ScaledLinear(
            embed_dim, in_proj_dim, bias=True, initial_scale=self.head_dim**-0.25
        )
        self.whiten_values = Whiten(
            num_groups=num_heads, whitening_limit=2.0, prob=(0.025, 0.25), grad_scale=0.025
        )
        self.whiten_keys = Whiten(
            num_groups=num_heads, whitening_limit=2.0, prob=(0.025, 0.25), grad_scale=0.025
        )
        self.linear_pos = ScaledLinear(
            embed_dim, num_heads * pos_dim, bias=False, initial_scale=0.05
        )
        # Hook points for diagnostics.
        self.copy_pos_query = Identity()
        self.copy_query = Identity()
        self.out_proj = ScaledLinear(attention_dim // 2, embed_dim, bias=True, initial_scale=0.05)
        self.in_proj2 = nn.Linear(embed_dim, attention_dim // 2, bias=False)
        self.out_proj2 = ScaledLinear(attention_dim // 2, embed_dim, bias=True, initial_scale=0.05)
        self.whiten_values2 = Whiten(
            num_groups=num_heads, whitening_limit=2.0, prob=(0.025, 0.25), grad_scale=0.025
        )

    def _split_projection(self, x_proj: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(T, N, in_proj_dim) -> q (T, N, A), k (T, N, A), v (T, N, A // 2), p (T, N, H * pos)."""
        a = self.attention_dim
        q = x_proj[..., 0:a]
        k = x_proj[..., a : 2 * a]
        v = x_proj[..., 2 * a : 2 * a + a // 2]
        p = x_proj[..., 2 * a + a // 2 :]
        return q, k, v, p

    def _scores(self, q: Tensor, k: Tensor, p: Tensor, pos: Tensor) -> Tensor:
        """Attention scores (N, H, T, S) from q (T, N, A), k (S, N, A), p (T, N, H * pos_dim)
        and projected positions pos (1, S + T - 1, H * pos_dim)."""
        seq_len, batch_size, _ = q.shape
        num_keys = k.shape[0]
        heads = self.num_heads
        q = q.reshape(seq_len, batch_size, heads, self.head_dim).permute(1, 2, 0, 3)
        p = p.reshape(seq_len, batch_size, heads, self.pos_dim).permute(1, 2, 0, 3)
        k = k.reshape(num_keys, batch_size, heads, self.head_dim).permute(1, 2, 3, 0)
        pos = pos.reshape(1, seq_len + num_keys - 1, heads, self.pos_dim).permute(0, 2, 3, 1)
        pos_weights = _relative_to_absolute(torch.matmul(p, pos), num_keys)
        return torch.matmul(q, k) + pos_weights

    def _weighted_values(self, attn_weights: Tensor, v: Tensor) -> Tensor:
        """attn_weights (N * H, T, S) applied to values v (S, N, A // 2).
        Returns (T, N, A // 2), heads concatenated."""
        num_keys, batch_size, _ = v.shape
        seq_len = attn_weights.shape[1]
        value_head_dim = self.head_dim // 2
        v = v.reshape(num_keys, batch_size * self.num_heads, value_head_dim).transpose(0, 1)
        out = torch.bmm(attn_weights, v)
        return out.transpose(0, 1).contiguous().view(seq_len, batch_size, self.attention_dim // 2)

    def forward(
        self,
        x: Tensor,
        pos_emb: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
          x: (T, N, embed_dim).
          pos_emb: (1, 2T - 1, embed_dim).
          key_padding_mask: (N, T) bool, True at padding keys.
          attn_mask: (T, T) bool, True where query i may not attend to key j.
        Returns:
          (output (T, N, embed_dim), attention weights (N * H, T, T)); weights of masked
          positions are 0 (so fully masked rows are 0, not NaN).
        """
        seq_len, batch_size, _ = x.shape
        q, k, v, p = self._split_projection(self.in_proj(x))
        k = self.whiten_keys(k)
        v = self.whiten_values(v)
        q = self.copy_query(q)
        p = self.copy_pos_query(p)
        scores = self._scores(q, k, p, self.linear_pos(pos_emb))
        if not torch.jit.is_scripting():
            if self.training and random.random() < 0.1:
                scores = penalize_abs_values_gt(scores, limit=25.0, penalty=1.0e-04)

        mask: Optional[Tensor] = None
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool or attn_mask.shape != (seq_len, seq_len):
                raise ValueError(
                    f"attn_mask must be a ({seq_len}, {seq_len}) bool tensor, "
                    f"got {attn_mask.dtype} {attn_mask.shape}"
                )
            mask = attn_mask.unsqueeze(0).unsqueeze(0)
        if key_padding_mask is not None:
            padding = key_padding_mask.unsqueeze(1).unsqueeze(2)
            mask = padding if mask is None else mask | padding
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        attn_weights = softmax(scores, dim=-1)
        if mask is not None:
            attn_weights = attn_weights.masked_fill(mask, 0.0)
        attn_weights = attn_weights.reshape(batch_size * self.num_heads, seq_len, seq_len)
        attn_weights = nn.functional.dropout(attn_weights, p=self.dropout, training=self.training)
        return self.out_proj(self._weighted_values(attn_weights, v)), attn_weights

    def forward2(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        """Second attention pass with the weights of :meth:`forward`.

        Args:
          x: (T, N, embed_dim).
          attn_weights: (N * H, T, T).
        Returns:
          (T, N, embed_dim).
        """
        v = self.whiten_values2(self.in_proj2(x))
        return self.out_proj2(self._weighted_values(attn_weights, v))

    def streaming_forward(
        self, x: Tensor, pos_emb: Tensor, cached_key: Tensor, cached_val: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Attention of a chunk over [cached left context; chunk], without masking.

        Args:
          x: (T, N, embed_dim).
          pos_emb: (1, LC + 2T - 1, embed_dim).
          cached_key: (LC, N, A); cached_val: (LC, N, A // 2).
        Returns:
          (output (T, N, embed_dim), weights (N * H, T, LC + T), new cached_key, new cached_val)
          where the new caches are the last LC keys/values.
        """
        seq_len, batch_size, _ = x.shape
        q, k, v, p = self._split_projection(self.in_proj(x))
        left_context_len = cached_key.shape[0]
        k = torch.cat([cached_key, k], dim=0)
        v = torch.cat([cached_val, v], dim=0)
        scores = self._scores(q, k, p, self.linear_pos(pos_emb))
        num_keys = k.shape[0]
        attn_weights = softmax(scores, dim=-1).reshape(
            batch_size * self.num_heads, seq_len, num_keys
        )
        out = self.out_proj(self._weighted_values(attn_weights, v))
        return out, attn_weights, k[num_keys - left_context_len :], v[num_keys - left_context_len :]

    def streaming_forward2(
        self, x: Tensor, attn_weights: Tensor, cached_val: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Streaming :meth:`forward2`.

        Args:
          x: (T, N, embed_dim); attn_weights: (N * H, T, LC + T); cached_val: (LC, N, A // 2).
        Returns:
          (output (T, N, embed_dim), new cached_val (LC, N, A // 2)).
        """
        left_context_len = cached_val.shape[0]
        v = torch.cat([cached_val, self.in_proj2(x)], dim=0)
        out = self.out_proj2(self._weighted_values(attn_weights, v))
        return out, v[v.shape[0] - left_context_len :]


class PoolingModule(nn.Module):
    """Causal running mean over time (of the valid frames), then a square projection."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = ScaledLinear(d_model, d_model, initial_scale=0.1, bias=False)

    def forward(self, x: Tensor, src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
          x: (T, N, C).
          src_key_padding_mask: (N, T) bool, True at padding frames (which output 0).
        Returns:
          (T, N, C): frame t holds proj(mean of the valid frames 0..t).
        """
        if src_key_padding_mask is not None:
            valid = src_key_padding_mask.logical_not().to(x.dtype)  # (N, T)
            # clamp: an utterance with no valid frame gets zeros instead of 0 / 0.
            pooling_mask = valid / valid.cumsum(dim=1).clamp(min=1.0)
            pooling_mask = pooling_mask.transpose(0, 1).contiguous().unsqueeze(-1)
        else:
            counts = torch.arange(1, x.shape[0] + 1, device=x.device).unsqueeze(1)
            pooling_mask = (1.0 / counts).unsqueeze(2)
        return self.proj(x.cumsum(dim=0) * pooling_mask)

    def streaming_forward(
        self, x: Tensor, cached_len: Tensor, cached_avg: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """
        Args:
          x: (T, N, C) chunk.
          cached_len: (N,) int64 frames seen before; cached_avg: (N, C) their mean.
        Returns:
          (output (T, N, C), cached_len + T, mean over all frames seen (N, C)).
        """
        x = x.cumsum(dim=0) + (cached_avg * cached_len.unsqueeze(1)).unsqueeze(0)
        counts = torch.arange(1, x.size(0) + 1, device=x.device)
        counts = counts.unsqueeze(1) + cached_len.unsqueeze(0)  # (T, N)
        x = x * (1.0 / counts).unsqueeze(2)
        return self.proj(x), cached_len + x.size(0), x[-1]


class FeedforwardModule(nn.Module):
    """Linear -> ActivationBalancer -> DoubleSwish -> Dropout -> Linear (small init)."""

    def __init__(self, d_model: int, feedforward_dim: int, dropout: float) -> None:
        super().__init__()
        self.in_proj = nn.Linear(d_model, feedforward_dim)
        self.balancer = ActivationBalancer(
            feedforward_dim, channel_dim=-1, max_abs=10.0, min_prob=0.25
        )
        self.activation = DoubleSwish()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = ScaledLinear(feedforward_dim, d_model, initial_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., d_model) -> (..., d_model)."""
        x = self.activation(self.balancer(self.in_proj(x)))
        return self.out_proj(self.dropout(x))


class ConvolutionModule(nn.Module):
    """Causal convolution module: pointwise conv to 2C -> GLU -> causal depthwise conv
    (left padding kernel_size - 1) -> DoubleSwish -> pointwise conv (small init).

    Args:
      channels: C.
      kernel_size: depthwise kernel size (odd).
      bias: whether the convolutions have biases.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, kernel_size=1, bias=bias)
        # Keeps the GLU inputs in a range where the sigmoid gate can learn.
        self.deriv_balancer1 = ActivationBalancer(
            2 * channels, channel_dim=1, max_abs=10.0, min_positive=0.05, max_positive=1.0
        )
        self.lorder = kernel_size - 1
        self.depthwise_conv = nn.Conv1d(
            channels, channels, kernel_size, stride=1, padding=0, groups=channels, bias=bias
        )
        self.deriv_balancer2 = ActivationBalancer(
            channels, channel_dim=1, min_positive=0.05, max_positive=1.0, max_abs=20.0
        )
        self.activation = DoubleSwish()
        self.pointwise_conv2 = ScaledConv1d(
            channels, channels, kernel_size=1, stride=1, padding=0, bias=bias, initial_scale=0.05
        )

    def _gated_input(self, x: Tensor) -> Tensor:
        """(T, N, C) -> GLU output (N, C, T)."""
        x = self.pointwise_conv1(x.permute(1, 2, 0))
        return nn.functional.glu(self.deriv_balancer1(x), dim=1)

    def _output(self, x: Tensor) -> Tensor:
        """Depthwise conv (valid) on (N, C, T + lorder) -> (T, N, C)."""
        x = self.activation(self.deriv_balancer2(self.depthwise_conv(x)))
        return self.pointwise_conv2(x).permute(2, 0, 1)

    def forward(self, x: Tensor, src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
          x: (T, N, C).
          src_key_padding_mask: (N, T) bool, True at padding frames (zeroed before the
            depthwise conv).
        Returns:
          (T, N, C).
        """
        x = self._gated_input(x)
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.unsqueeze(1), 0.0)
        x = nn.functional.pad(x, (self.lorder, 0), "constant", 0.0)
        return self._output(x)

    def streaming_forward(self, x: Tensor, cache: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
          x: (T, N, C) chunk.
          cache: (N, C, kernel_size - 1) last GLU outputs of the previous chunks.
        Returns:
          (output (T, N, C), new cache (N, C, kernel_size - 1)).
        """
        x = torch.cat([cache, self._gated_input(x)], dim=2)
        new_cache = x[:, :, x.size(2) - self.lorder :]
        return self._output(x), new_cache


class Conv2dSubsampling(nn.Module):
    """Convolutional embedding: (N, T, idim) -> (N, (T - 7) // 2, odim).

    Three 3x3 Conv2d layers (time strides 1, 2, 1; frequency strides 1, 2, 2; frequency
    padding 1 on the first), each followed by an ActivationBalancer and DoubleSwish, then a
    linear projection of the flattened channels x frequencies and dropout. Needs T >= 9.

    Args:
      in_channels: input feature dimension idim (>= 7).
      out_channels: output dimension odim.
      layer1_channels, layer2_channels, layer3_channels: conv channels.
      dropout: output dropout.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layer1_channels: int = 8,
        layer2_channels: int = 32,
        layer3_channels: int = 128,
        dropout: float = 0.1,
    ) -> None:
        if in_channels < 7:
            raise ValueError(
                f"Conv2dSubsampling needs at least 7 input features, got {in_channels}"
            )
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, padding=(0, 1)),
            ActivationBalancer(layer1_channels, channel_dim=1),
            DoubleSwish(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2, padding=0),
            ActivationBalancer(layer2_channels, channel_dim=1),
            DoubleSwish(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(1, 2)),
            ActivationBalancer(layer3_channels, channel_dim=1),
            DoubleSwish(),
        )
        out_height = (((in_channels - 1) // 2) - 1) // 2
        self.out = ScaledLinear(out_height * layer3_channels, out_channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, T, idim) -> (N, (T - 7) // 2, odim)."""
        if not torch.jit.is_tracing() and x.size(1) < 9:
            raise ValueError(f"Conv2dSubsampling needs at least 9 input frames, got {x.size(1)}")
        x = self.conv(x.unsqueeze(1))  # (N, C, T', F')
        b, c, t, f = x.size()
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        return self.dropout(x)
