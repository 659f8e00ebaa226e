#!/usr/bin/env python3
"""Stage 2 without MUSAN: babble and coloured noise as MUSAN-named lhotse manifests."""

from icefall.data.noise import main

if __name__ == "__main__":
    main()
