"""TorchScript helpers: tracing modules that carry ``@torch.jit.export`` methods, and checking
that an exported file loads in a process that never imports the toolkit."""

import contextlib
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator, Sequence, Tuple, Union

import torch

PathLike = Union[str, Path]

# Module names a standalone TorchScript file must never need: the library and the recipe files.
TOOLKIT_MODULES = (
    "icefall",
    "zipformer",
    "scaling",
    "scaling_converter",
    "decoder",
    "joiner",
    "model",
    "train",
    "onnx_wrappers",
    "export",
)


@contextlib.contextmanager
def exported_methods_hidden_from_tracer() -> Iterator[None]:
    """Makes ``torch.jit.trace`` treat modules with ``@torch.jit.export`` methods as plain ones.

    ``torch.jit.trace`` scripts every submodule that has exported methods (tracing then fails
    on methods that only the scripting path supports). Only ``forward`` is needed in a traced
    file, so while this context is active the tracer is told that no module has exports.
    """
    jit_internal = torch._jit_internal
    original = jit_internal.module_has_exports
    jit_internal.module_has_exports = lambda mod: False
    try:
        yield
    finally:
        jit_internal.module_has_exports = original


def trace_forward(
    module: torch.nn.Module, example_inputs: Tuple, check_trace: bool = False
) -> torch.jit.ScriptModule:
    """``torch.jit.trace(module, example_inputs)`` that ignores exported methods (see above)."""
    with exported_methods_hidden_from_tracer():
        return torch.jit.trace(module, example_inputs, check_trace=check_trace)


@contextlib.contextmanager
def eager_branches_while_tracing() -> Iterator[None]:
    """Makes ``torch.jit.is_tracing()`` return False, so a trace records the eager code path.

    Model code sometimes takes a simpler branch under tracing (for example a decoder that skips
    the clamp/mask of ``-1`` "no token" ids, meant for PNNX). Tracing inside this context
    records the eager branch instead, which is what ONNX and TorchScript users need.
    """
    original = torch.jit.is_tracing
    torch.jit.is_tracing = lambda: False
    try:
        yield
    finally:
        torch.jit.is_tracing = original


def check_loads_without_toolkit(
    filename: PathLike,
    forbidden_modules: Sequence[str] = TOOLKIT_MODULES,
    timeout: float = 300.0,
) -> dict:
    """Loads a TorchScript file with ``torch.jit.load`` in a fresh, isolated Python process.

    The child runs with ``python -I`` (no PYTHONPATH, no user site, no script directory on
    ``sys.path``) from an empty temporary directory, and an import hook makes any import of
    ``forbidden_modules`` fail. It reports the TorchScript methods of the loaded module.

    Returns:
      ``{"methods": [...], "imported_forbidden": [...]}`` from the child.

    Raises:
      RuntimeError: if the child fails to load the file (its stderr is included).
    """
    code = textwrap.dedent(
        """
        import importlib.abc, json, sys
        FORBIDDEN = set(json.loads(sys.argv[2]))

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in FORBIDDEN:
                    raise ImportError(f"standalone load must not import {name}")
                return None

        sys.meta_path.insert(0, Block())
        import torch
        m = torch.jit.load(sys.argv[1], map_location="cpu")
        methods = sorted(m._c._method_names())
        imported = sorted(n for n in sys.modules if n.split(".")[0] in FORBIDDEN)
        print(json.dumps({"methods": methods, "imported_forbidden": imported}))
        """
    )
    with tempfile.TemporaryDirectory() as empty_dir:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", code, str(Path(filename).resolve()),
             json.dumps(list(forbidden_modules))],
            cwd=empty_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(
            f"torch.jit.load({filename}) failed in a clean process (rc {proc.returncode}):\n"
            f"{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])
