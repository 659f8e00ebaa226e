#!/usr/bin/env python3
"""Stage 1: lhotse recording/supervision manifests ``tiny_{recordings,supervisions}_{part}``."""

from icefall.data.tts_corpus import manifests_main

if __name__ == "__main__":
    manifests_main()
