#!/usr/bin/env python3
"""Stage 0: synthesise the tiny corpus (see icefall/data/tts_corpus.py for the options)."""

from icefall.data.tts_corpus import main

if __name__ == "__main__":
    main()
