"""Transducer model of the streaming Zipformer recipe: encoder + stateless decoder + joiner.

Training computes two losses with ``icefall.rnnt_loss`` (k2's API in plain PyTorch):
the smoothed "simple" loss from linear heads (``simple_am_proj``/``simple_lm_proj``), whose
occupation gradients choose the pruning ranges, and the pruned loss of the full joiner
evaluated only inside those ranges. State_dict names and order (encoder, decoder, joiner,
simple_am_proj, simple_lm_proj) match icefall's ``pruned_transducer_stateless7/model.py``.

With ``use_ctc=True`` (``train.py --use-ctc 1``, as in icefall's newer ``zipformer`` recipe) a
CTC head ``ctc_output`` (dropout, linear, log-softmax over the encoder output) adds an
auxiliary CTC loss; it helps a small model find the alignment early. The head is only in the
``state_dict`` when enabled, so default checkpoints keep icefall's keys.

Targets ``y`` are given either as a list of token-id lists (what
``sentencepiece.SentencePieceProcessor.encode(texts, out_type=int)`` returns; k2.RaggedTensor
in icefall) or as a tuple ``(y_padded, y_lens)`` of an (N, S) int64 tensor and (N,) lengths.
"""

from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn

from icefall.rnnt_loss import (
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    rnnt_loss_pruned,
    rnnt_loss_smoothed,
)

Targets = Union[List[List[int]], Tuple[torch.Tensor, torch.Tensor]]


def pad_token_ids(
    y: List[List[int]], pad_value: int, device: Union[str, torch.device] = "cpu"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pad a list of token-id lists.

    Returns:
      (y_padded, y_lens): (N, max_len) int64 filled with ``pad_value`` after each sequence,
      and (N,) int64 lengths, both on ``device``.
    """
    lens = [len(ids) for ids in y]
    padded = torch.full((len(y), max(lens, default=0)), pad_value, dtype=torch.int64)
    for i, ids in enumerate(y):
        padded[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return padded.to(device), torch.tensor(lens, dtype=torch.int64, device=device)


def _scaled_linear(in_features: int, out_features: int, initial_scale: float) -> nn.Linear:
    """nn.Linear whose initial weight is scaled down (icefall's ScaledLinear initialisation)."""
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.mul_(initial_scale)
        nn.init.uniform_(linear.bias, -0.1 * initial_scale, 0.1 * initial_scale)
    return linear


class Transducer(nn.Module):
    """RNN-T model trained with the pruned transducer loss.

    Args:
      encoder: maps (x (N, T, F), x_lens (N,)) to (encoder_out (N, T', encoder_dim), lens (N,)).
      decoder: stateless decoder; must have ``blank_id``; (N, U) ids -> (N, U, decoder_dim).
      joiner: has ``encoder_proj``, ``decoder_proj`` and ``forward(enc, dec, project_input)``.
      encoder_dim, decoder_dim, joiner_dim, vocab_size: model dimensions.
      use_ctc: add the CTC head ``ctc_output``; ``forward`` then also returns the CTC loss.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        joiner: nn.Module,
        encoder_dim: int,
        decoder_dim: int,
        joiner_dim: int,
        vocab_size: int,
        use_ctc: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.joiner = joiner
        self.joiner_dim = joiner_dim
        self.simple_am_proj = _scaled_linear(encoder_dim, vocab_size, initial_scale=0.25)
        self.simple_lm_proj = _scaled_linear(decoder_dim, vocab_size, initial_scale=0.25)
        self.ctc_output: Optional[nn.Module] = None
        if use_ctc:
            self.ctc_output = nn.Sequential(
                nn.Dropout(p=0.1), nn.Linear(encoder_dim, vocab_size), nn.LogSoftmax(dim=-1)
            )

    def _targets_to_padded(
        self, y: Targets, device: torch.device
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(y, tuple) and len(y) == 2 and isinstance(y[0], torch.Tensor):
            y_padded, y_lens = y
            return y_padded.to(device=device, dtype=torch.int64), y_lens.to(
                device=device, dtype=torch.int64
            )
        return pad_token_ids(list(y), pad_value=0, device=device)

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: Targets,
        prune_range: int = 5,
        am_scale: float = 0.0,
        lm_scale: float = 0.0,
    ) -> Tuple[torch.Tensor, ...]:
        """Compute the simple and pruned transducer losses (and the CTC loss with a CTC head).

        Args:
          x: (N, T, C) input features.
          x_lens: (N,) number of valid frames in ``x``.
          y: targets, a list of N token-id lists or ``(y_padded (N, S), y_lens (N,))``.
          prune_range: number of symbols kept per frame for the pruned loss.
          am_scale: weight of the acoustic-only term in the smoothed simple loss.
          lm_scale: weight of the LM-only term in the smoothed simple loss.

        Returns:
          (simple_loss, pruned_loss), or (simple_loss, pruned_loss, ctc_loss) when the model
          has a CTC head: fp32 scalars, each summed over utterances.
        """
        assert x.ndim == 3, x.shape
        assert x_lens.ndim == 1, x_lens.shape
        y_padded, y_lens = self._targets_to_padded(y, x.device)
        assert y_padded.size(0) == x.size(0) == x_lens.size(0), (y_padded.shape, x.shape)

        encoder_out, x_lens = self.encoder(x, x_lens)
        assert torch.all(x_lens > 0), x_lens

        blank_id = self.decoder.blank_id
        batch_size = y_padded.size(0)
        positions = torch.arange(y_padded.size(1), device=x.device)
        padding = positions.unsqueeze(0) >= y_lens.unsqueeze(1)
        # As in icefall: symbols are padded with 0, the decoder input (sos + y) with blank.
        y_padded = y_padded.masked_fill(padding, 0)
        sos = torch.full((batch_size, 1), blank_id, dtype=torch.int64, device=x.device)
        sos_y_padded = torch.cat([sos, y_padded.masked_fill(padding, blank_id)], dim=1)

        decoder_out = self.decoder(sos_y_padded)

        boundary = torch.zeros((batch_size, 4), dtype=torch.int64, device=x.device)
        boundary[:, 2] = y_lens
        boundary[:, 3] = x_lens

        lm = self.simple_lm_proj(decoder_out)
        am = self.simple_am_proj(encoder_out)

        with torch.autocast(device_type=x.device.type, enabled=False):
            simple_loss, (px_grad, py_grad) = rnnt_loss_smoothed(
                lm=lm.float(),
                am=am.float(),
                symbols=y_padded,
                termination_symbol=blank_id,
                lm_only_scale=lm_scale,
                am_only_scale=am_scale,
                boundary=boundary,
                reduction="sum",
                return_grad=True,
            )

        ranges = get_rnnt_prune_ranges(
            px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=prune_range
        )
        am_pruned, lm_pruned = do_rnnt_pruning(
            am=self.joiner.encoder_proj(encoder_out),
            lm=self.joiner.decoder_proj(decoder_out),
            ranges=ranges,
        )
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)

        with torch.autocast(device_type=x.device.type, enabled=False):
            pruned_loss = rnnt_loss_pruned(
                logits=logits.float(),
                symbols=y_padded,
                ranges=ranges,
                termination_symbol=blank_id,
                boundary=boundary,
                reduction="sum",
            )
        if self.ctc_output is None:
            return simple_loss, pruned_loss
        return simple_loss, pruned_loss, self._ctc_loss(encoder_out, x_lens, y_padded, y_lens)

    def _ctc_loss(
        self,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
    ) -> torch.Tensor:
        """CTC loss (blank = the decoder's blank id) summed over utterances.

        Args:
          encoder_out: (N, T, encoder_dim); encoder_out_lens: (N,).
          y_padded: (N, S) token ids; y_lens: (N,) number of tokens.
        """
        assert self.ctc_output is not None
        log_probs = self.ctc_output(encoder_out).float()
        with torch.autocast(device_type=encoder_out.device.type, enabled=False):
            return nn.functional.ctc_loss(
                log_probs=log_probs.permute(1, 0, 2),
                targets=y_padded,
                input_lengths=encoder_out_lens,
                target_lengths=y_lens,
                blank=self.decoder.blank_id,
                reduction="sum",
                zero_infinity=True,
            )
