#!/usr/bin/env python3
"""Export the streaming Zipformer transducer to ONNX for sherpa-onnx (model type ``zipformer``).

Usage (from ``egs/<corpus>/ASR``)::

  ./pruned_transducer_stateless7_streaming/export-onnx.py --epoch 30 --avg 9 \\
      --exp-dir pruned_transducer_stateless7_streaming/exp --tokens data/lang_bpe_500/tokens.txt

writes ``{encoder,decoder,joiner}-epoch-30-avg-9.onnx`` and their ``*.int8.onnx`` copies
(dynamic int8 quantisation) to ``--exp-dir``:

* encoder: ``x (N, T, 80)`` plus 7 state tensors per stack -> ``encoder_out (N, T', joiner_dim)``
  plus the new states (``T = decode_chunk_len + 7``), with sherpa-onnx's metadata
  (``model_type=zipformer``, ``decode_chunk_len``, ``T``, ``num_encoder_layers``,
  ``encoder_dims``, ``attention_dims``, ``cnn_module_kernels``, ``left_context_len``, ...);
* decoder: ``y (N, context_size)`` int64 -> ``decoder_out (N, joiner_dim)``, metadata
  ``context_size`` and ``vocab_size``;
* joiner: ``encoder_out (N, joiner_dim), decoder_out (N, joiner_dim) -> logit (N, vocab_size)``.

The batch axis is dynamic everywhere. Every file is checked against the sherpa-onnx contract
(:func:`icefall.export.sherpa_contract.check_sherpa_onnx_contract`) before the script ends.
Decode with sherpa-onnx::

  sherpa-onnx --tokens=tokens.txt --encoder=encoder-....onnx --decoder=decoder-....onnx \\
      --joiner=joiner-....onnx foo.wav
"""

import argparse
import logging
from pathlib import Path
from typing import Dict

import torch
from export import load_export_model
from onnx_wrappers import (
    PAD_LENGTH,
    OnnxDecoder,
    OnnxEncoder,
    OnnxJoiner,
    encoder_dynamic_axes,
    encoder_io_names,
    encoder_meta_data,
)
from scaling_converter import convert_scaled_to_non_scaled
from train import add_model_arguments

from icefall.export.cli import script_parser, setup_script_logging
from icefall.export.model_loading import add_export_arguments, checkpoint_description
from icefall.export.onnx_meta import add_meta_data, decoder_meta_data, joiner_meta_data
from icefall.export.quantize import quantize_int8
from icefall.export.sherpa_contract import check_sherpa_onnx_contract
from icefall.utils import str2bool

MAX_OPSET = 17


def get_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    add_export_arguments(parser)
    parser.add_argument(
        "--opset-version", type=int, default=13, help=f"ONNX opset (at most {MAX_OPSET})"
    )
    parser.add_argument(
        "--enable-int8-quantization",
        type=str2bool,
        default=True,
        help="also write *.int8.onnx (onnxruntime dynamic quantisation)",
    )
    add_model_arguments(parser)
    return parser


def export_encoder_model_onnx(
    encoder_model: OnnxEncoder,
    filename: Path,
    decode_chunk_len: int,
    opset_version: int = 13,
) -> None:
    """Exports one streaming step of ``encoder_model`` with dynamic batch and its metadata."""
    states = encoder_model.encoder.get_init_state(device=torch.device("cpu"))
    num_stacks = len(states) // 7
    x = torch.zeros(1, decode_chunk_len + PAD_LENGTH, 80, dtype=torch.float32)
    input_names, output_names = encoder_io_names(num_stacks)
    torch.onnx.export(
        encoder_model,
        (x, states),
        str(filename),
        verbose=False,
        opset_version=opset_version,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=encoder_dynamic_axes(num_stacks),
        dynamo=False,
    )
    add_meta_data(filename, encoder_meta_data(encoder_model.encoder, decode_chunk_len))
    logging.info(f"Exported encoder to {filename}")


def export_decoder_model_onnx(
    decoder_model: OnnxDecoder, filename: Path, opset_version: int = 13
) -> None:
    """Exports the decoder so that ``-1`` ids keep giving a zero embedding.

    As in icefall the decoder is scripted first: inside TorchScript ``torch.jit.is_tracing()``
    is False, so the clamp/mask of ``-1`` stays in the exported graph.
    """
    context_size = decoder_model.decoder.context_size
    vocab_size = decoder_model.decoder.vocab_size
    y = torch.zeros(10, context_size, dtype=torch.int64)
    kwargs = dict(
        verbose=False,
        opset_version=opset_version,
        input_names=["y"],
        output_names=["decoder_out"],
        dynamic_axes={"y": {0: "N"}, "decoder_out": {0: "N"}},
        dynamo=False,
    )
    torch.onnx.export(torch.jit.script(decoder_model), (y,), str(filename), **kwargs)
    add_meta_data(filename, decoder_meta_data(context_size, vocab_size))
    logging.info(f"Exported decoder to {filename}")


def export_joiner_model_onnx(
    joiner_model: OnnxJoiner, filename: Path, opset_version: int = 13
) -> None:
    """Exports the joiner on projected inputs (N, joiner_dim) -> logits (N, vocab_size)."""
    joiner_dim = joiner_model.output_linear.weight.shape[1]
    encoder_out = torch.rand(11, joiner_dim, dtype=torch.float32)
    decoder_out = torch.rand(11, joiner_dim, dtype=torch.float32)
    torch.onnx.export(
        joiner_model,
        (encoder_out, decoder_out),
        str(filename),
        verbose=False,
        opset_version=opset_version,
        input_names=["encoder_out", "decoder_out"],
        output_names=["logit"],
        dynamic_axes={"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}},
        dynamo=False,
    )
    add_meta_data(filename, joiner_meta_data(joiner_dim))
    logging.info(f"Exported joiner to {filename}")


def export_onnx_models(
    model: torch.nn.Module,
    out_dir: Path,
    suffix: str,
    decode_chunk_len: int,
    opset_version: int = 13,
    int8: bool = True,
) -> Dict[str, Path]:
    """Writes ``{encoder,decoder,joiner}-{suffix}.onnx`` (and ``.int8.onnx``) to ``out_dir``.

    Args:
      model: the trained transducer (not modified: a converted copy is exported).
      suffix: file-name suffix, e.g. ``epoch-30-avg-9``.
      decode_chunk_len: feature frames per streaming step (metadata ``decode_chunk_len``).

    Returns:
      Paths by role: ``encoder``, ``decoder``, ``joiner`` and, with ``int8``, ``encoder_int8``...
    """
    if opset_version > MAX_OPSET:
        raise ValueError(f"--opset-version {opset_version} > {MAX_OPSET}: older sherpa-onnx fails")
    model = convert_scaled_to_non_scaled(model, inplace=False).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {role: out_dir / f"{role}-{suffix}.onnx" for role in ("encoder", "decoder", "joiner")}
    with torch.no_grad():
        export_encoder_model_onnx(
            OnnxEncoder(model.encoder, model.joiner.encoder_proj),
            paths["encoder"],
            decode_chunk_len,
            opset_version,
        )
        export_decoder_model_onnx(
            OnnxDecoder(model.decoder, model.joiner.decoder_proj), paths["decoder"], opset_version
        )
        export_joiner_model_onnx(
            OnnxJoiner(model.joiner.output_linear), paths["joiner"], opset_version
        )
    if int8:
        ops = {"encoder": ["MatMul"], "decoder": ["MatMul", "Gather"], "joiner": ["MatMul"]}
        for role in ("encoder", "decoder", "joiner"):
            paths[f"{role}_int8"] = out_dir / f"{role}-{suffix}.int8.onnx"
            quantize_int8(paths[role], paths[f"{role}_int8"], ops[role])
    return paths


def check_exported(paths: Dict[str, Path], tokens: Path) -> None:
    """Runs the sherpa-onnx contract checklist on the float and int8 files (raises on problems)."""
    for kind in ("", "_int8"):
        if f"encoder{kind}" not in paths:
            continue
        check_sherpa_onnx_contract(
            paths[f"encoder{kind}"],
            paths[f"decoder{kind}"],
            paths[f"joiner{kind}"],
            tokens=tokens,
            max_opset=MAX_OPSET,
            raise_errors=True,
        )
        logging.info(f"{paths[f'encoder{kind}'].name} & co. pass the sherpa-onnx contract checks")


def main() -> None:
    params, model = load_export_model(get_parser())
    suffix = checkpoint_description(params.epoch, params.iter, params.avg, False)
    paths = export_onnx_models(
        model,
        Path(params.exp_dir),
        suffix,
        decode_chunk_len=params.decode_chunk_len,
        opset_version=params.opset_version,
        int8=params.enable_int8_quantization,
    )
    check_exported(paths, Path(params.tokens))


if __name__ == "__main__":
    setup_script_logging()
    main()
