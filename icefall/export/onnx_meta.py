"""Reading and writing the ``metadata_props`` of ONNX files (what sherpa-onnx reads).

sherpa-onnx parses every value as a string: integers with ``atoi`` and integer lists as
comma-separated values without spaces (``"2,4,3,2,4"``).
"""

from pathlib import Path
from typing import Any, Dict, Iterable, Sequence, Union

import onnx

PathLike = Union[str, Path]


def int_list_to_str(values: Iterable[int]) -> str:
    """Formats integers as sherpa-onnx lists them: ``[2, 4, 3]`` -> ``"2,4,3"``."""
    return ",".join(str(int(v)) for v in values)


def meta_value_to_str(value: Any) -> str:
    """Converts one metadata value to its string form (lists and tuples become ``"a,b,c"``)."""
    if isinstance(value, (list, tuple)):
        return int_list_to_str(value)
    return str(value)


def add_meta_data(filename: PathLike, meta_data: Dict[str, Any]) -> None:
    """Writes ``meta_data`` into the ONNX file ``filename`` in place.

    Keys already present are overwritten; the others keep their value. Key order follows
    ``meta_data``.

    Args:
      filename: path of an ``.onnx`` file (single file, no external data).
      meta_data: key -> value; values are converted with :func:`meta_value_to_str`.
    """
    model = onnx.load(str(filename))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in meta_data]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    for key, value in meta_data.items():
        model.metadata_props.add(key=str(key), value=meta_value_to_str(value))
    onnx.save(model, str(filename))


def read_meta_data(filename: PathLike) -> Dict[str, str]:
    """Returns the ``metadata_props`` of an ONNX file as an ordered ``{key: value}`` dict."""
    model = onnx.load(str(filename), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def zipformer_streaming_meta_data(
    encoder_dims: Sequence[int],
    attention_dims: Sequence[int],
    num_encoder_layers: Sequence[int],
    cnn_module_kernels: Sequence[int],
    left_context_len: Sequence[int],
    decode_chunk_len: int,
    pad_length: int = 7,
    model_author: str = "k2-fsa",
    version: str = "1",
) -> Dict[str, str]:
    """Encoder metadata of sherpa-onnx's streaming ``zipformer`` (v1) model type.

    Keys and order are those of icefall's ``export-onnx.py``; ``T`` is the number of
    feature frames fed per call, ``decode_chunk_len + pad_length``.

    Args:
      encoder_dims, attention_dims, num_encoder_layers, cnn_module_kernels: one value per stack.
      left_context_len: per stack, the left context in frames at that stack's frame rate.
      decode_chunk_len: feature frames (100 Hz) advanced per call.
      pad_length: right-context frames of the convolutional front end (7 for Zipformer v1).
    """
    lists = [encoder_dims, attention_dims, num_encoder_layers, cnn_module_kernels, left_context_len]
    if len({len(v) for v in lists}) != 1:
        raise ValueError(f"per-stack lists differ in length: {[list(v) for v in lists]}")
    return {
        "model_type": "zipformer",
        "version": version,
        "model_author": model_author,
        "decode_chunk_len": str(int(decode_chunk_len)),
        "T": str(int(decode_chunk_len) + int(pad_length)),
        "num_encoder_layers": int_list_to_str(num_encoder_layers),
        "encoder_dims": int_list_to_str(encoder_dims),
        "attention_dims": int_list_to_str(attention_dims),
        "cnn_module_kernels": int_list_to_str(cnn_module_kernels),
        "left_context_len": int_list_to_str(left_context_len),
    }


def decoder_meta_data(context_size: int, vocab_size: int) -> Dict[str, str]:
    """Decoder metadata that sherpa-onnx requires: ``context_size`` and ``vocab_size``."""
    return {"context_size": str(int(context_size)), "vocab_size": str(int(vocab_size))}


def joiner_meta_data(joiner_dim: int) -> Dict[str, str]:
    """Joiner metadata (informational; sherpa-onnx reads none)."""
    return {"joiner_dim": str(int(joiner_dim))}
