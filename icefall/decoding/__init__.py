"""Transducer searches (greedy, beam, modified beam, FSA-based fast beam search) and their
streaming variants. See the submodules for details."""

from icefall.decoding.beam_search import beam_search
from icefall.decoding.fast_beam_search import (
    FastBeamSearchConfig,
    fast_beam_search,
    fast_beam_search_nbest,
    fast_beam_search_nbest_LG,
    fast_beam_search_nbest_oracle,
    fast_beam_search_one_best,
)
from icefall.decoding.fsa import Fsa, compile_LG, trivial_graph
from icefall.decoding.greedy import greedy_search, greedy_search_batch
from icefall.decoding.hypothesis import Hypothesis, HypothesisList
from icefall.decoding.lattice import Lattice
from icefall.decoding.modified_beam_search import modified_beam_search
from icefall.decoding.streaming import (
    BeamSearchState,
    FastBeamSearchState,
    GreedySearchState,
    make_search_state,
    streaming_search,
)

__all__ = [
    "BeamSearchState",
    "FastBeamSearchConfig",
    "FastBeamSearchState",
    "Fsa",
    "GreedySearchState",
    "Hypothesis",
    "HypothesisList",
    "Lattice",
    "beam_search",
    "compile_LG",
    "fast_beam_search",
    "fast_beam_search_nbest",
    "fast_beam_search_nbest_LG",
    "fast_beam_search_nbest_oracle",
    "fast_beam_search_one_best",
    "greedy_search",
    "greedy_search_batch",
    "make_search_state",
    "modified_beam_search",
    "streaming_search",
    "trivial_graph",
]
