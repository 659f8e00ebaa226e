"""int8 dynamic quantisation of exported ONNX files (onnxruntime ``quantize_dynamic``)."""

import logging
from pathlib import Path
from typing import Sequence, Union

import onnx

from icefall.export.onnx_meta import add_meta_data, read_meta_data

PathLike = Union[str, Path]


def quantize_int8(
    model_input: PathLike,
    model_output: PathLike,
    op_types_to_quantize: Sequence[str] = ("MatMul",),
) -> None:
    """Writes an int8 copy of ``model_input`` (QInt8 weights, dynamic activation quantisation).

    As in icefall: ``("MatMul",)`` for the encoder and joiner, ``("MatMul", "Gather")`` for the
    decoder (its embedding). The metadata of the input file is copied to the output, so the
    int8 files load in sherpa-onnx exactly like the float ones.

    Args:
      model_input: float32 ``.onnx`` file.
      model_output: where to write the quantised model (e.g. ``encoder.int8.onnx``).
      op_types_to_quantize: ONNX op types whose weights become int8.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model_input, model_output = Path(model_input), Path(model_output)
    if model_input.resolve() == model_output.resolve():
        raise ValueError(f"quantize_int8 would overwrite its input {model_input}")
    quantize_dynamic(
        model_input=str(model_input),
        model_output=str(model_output),
        op_types_to_quantize=list(op_types_to_quantize),
        weight_type=QuantType.QInt8,
    )
    meta = read_meta_data(model_input)
    if meta and read_meta_data(model_output) != meta:
        add_meta_data(model_output, meta)
    onnx.checker.check_model(str(model_output))
    logging.info(f"Quantised {model_input} -> {model_output} ({', '.join(op_types_to_quantize)})")
