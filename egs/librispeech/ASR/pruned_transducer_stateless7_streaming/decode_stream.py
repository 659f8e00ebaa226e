"""Per-utterance state of real streaming decoding (icefall's ``DecodeStream``).

A stream owns its features (padded at the end), how far they have been consumed, the encoder
caches (the seven-state list of :meth:`Zipformer.get_init_state`, batch size 1) and the search
state of the decoding method (``icefall.decoding.streaming``).
"""

import math
from typing import List, Optional, Tuple

import torch

from icefall.decoding.fsa import Fsa
from icefall.decoding.streaming import SearchState, make_search_state

LOG_EPS = math.log(1e-10)
# The convolutional embedding keeps no cache: each chunk re-reads 7 frames of the previous one.
PAD_LENGTH = 7


class DecodeStream:
    """One utterance being decoded chunk by chunk.

    Args:
      params: needs ``decoding_method`` (greedy_search | modified_beam_search |
        fast_beam_search).
      cut_id: utterance id.
      initial_states: encoder states of one utterance (``model.encoder.get_init_state()``).
      model: the transducer (for the search state).
      decoding_graph: graph for fast_beam_search.
      device: where the search tensors live.
    """

    def __init__(
        self,
        params,
        cut_id: str,
        initial_states: List[torch.Tensor],
        model: torch.nn.Module,
        decoding_graph: Optional[Fsa] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        device = device if device is not None else torch.device("cpu")
        self.params = params
        self.cut_id = cut_id
        self.states = initial_states
        self.search: SearchState = make_search_state(
            params.decoding_method, model, device, decoding_graph
        )
        self.features: Optional[torch.Tensor] = None
        self.num_frames = 0
        self.num_processed_frames = 0
        self.done_frames = 0
        self.ground_truth = ""
        self._done = False

    @property
    def id(self) -> str:
        return self.cut_id

    @property
    def done(self) -> bool:
        """True once every feature frame has been handed out."""
        return self._done

    def set_features(self, features: torch.Tensor, tail_pad_len: int = 0) -> None:
        """Install (T, 80) features, right-padded with LOG_EPS by ``7 + tail_pad_len`` frames."""
        if features.dim() != 2:
            raise ValueError(f"features must be (T, num_features), got {tuple(features.shape)}")
        self.features = torch.nn.functional.pad(
            features, (0, 0, 0, PAD_LENGTH + tail_pad_len), mode="constant", value=LOG_EPS
        )
        self.num_frames = self.features.size(0)

    def get_feature_frames(self, chunk_size: int) -> Tuple[torch.Tensor, int]:
        """The next ``chunk_size + 7`` frames (fewer at the end); advances by ``chunk_size``."""
        assert self.features is not None, "call set_features() first"
        chunk_length = chunk_size + PAD_LENGTH
        length = min(self.num_frames - self.num_processed_frames, chunk_length)
        frames = self.features[self.num_processed_frames : self.num_processed_frames + length]
        self.num_processed_frames += chunk_size
        if self.num_processed_frames >= self.num_frames:
            self._done = True
        return frames, length

    def decoding_result(self) -> List[int]:
        """Token ids decoded so far."""
        return self.search.tokens
