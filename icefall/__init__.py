"""icefall: k2-free speech recognition toolkit (lhotse data, pruned RNN-T, streaming Zipformer).

Submodules are imported explicitly (``from icefall.checkpoint import save_checkpoint``) so that
``import icefall`` stays cheap and never needs k2, kaldifeat or torchaudio.
"""

__version__ = "0.1.0"
