"""Reading ``tokens.txt`` (``symbol id`` per line) with no heavy imports.

Neither torch nor onnx is imported, so the torch-free tools (``onnx_pretrained.py``, the
sherpa-onnx contract checker) and :mod:`icefall.utils` share this one parser.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

Pathlike = Union[str, Path]
_INT_RE = re.compile(r"^-?\d+$")


def read_tokens(filename: Pathlike, lone_id_is_space: bool = True) -> list[tuple[str, int]]:
    """Parses tokens.txt into ``(symbol, id)`` pairs in file order; blank lines are skipped.

    Args:
      lone_id_is_space: read a line holding only an id as the symbol ``" "``, as sherpa-onnx
        does (the default); when False such a line is an error, as in icefall.

    Raises:
      ValueError: naming ``file:line`` for a line that is not ``symbol id`` with an integer id.
    """
    entries = []
    with open(filename, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) == 1 and lone_id_is_space:
                fields = [" ", fields[0]]
            if len(fields) != 2 or not _INT_RE.match(fields[1]):
                raise ValueError(
                    f"{filename}:{line_number}: expected 'symbol id', got {line.rstrip()!r}"
                )
            entries.append((fields[0], int(fields[1])))
    return entries


def read_token_table(filename: Pathlike) -> dict[str, int]:
    """Read ``tokens.txt`` (``symbol id`` per line) into ``{symbol: id}``.

    Strict, as icefall: every non-blank line must be ``symbol id`` (see :func:`read_tokens`).
    """
    return dict(read_tokens(filename, lone_id_is_space=False))
