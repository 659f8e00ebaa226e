"""The sherpa-onnx model-file contract as a checklist (see the contract spec, section 13).

:func:`check_sherpa_onnx_contract` inspects an exported ``encoder.onnx`` / ``decoder.onnx`` /
``joiner.onnx`` (and optionally ``tokens.txt``) with ``onnx`` and, by default, runs them once
in onnxruntime with sherpa's own initial states and a batch of 2. It returns a list of
human-readable problems (empty when the files satisfy the contract) or raises
:class:`SherpaOnnxContractError` listing all of them.

It never loads sherpa-onnx itself: sherpa ends the process on a bad model, so loading it is
done in a subprocess (:mod:`icefall.export.sherpa_decode`).
"""

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from icefall.tokens import read_tokens

PathLike = Union[str, Path]
Dim = Union[int, str, None]  # static size, symbolic name, or unknown

FLOAT = onnx.TensorProto.FLOAT
INT64 = onnx.TensorProto.INT64
INT32 = onnx.TensorProto.INT32

ONLINE_MODEL_TYPES = ("conformer", "ebranchformer", "lstm", "zipformer", "zipformer2")
OFFLINE_TRANSDUCER_MODEL_TYPES = ("conformer", "zipformer", "zipformer2")
ZIPFORMER_V1_KEYS = (
    "model_type",
    "encoder_dims",
    "attention_dims",
    "num_encoder_layers",
    "cnn_module_kernels",
    "left_context_len",
    "T",
    "decode_chunk_len",
)
ZIPFORMER2_KEYS = (
    "model_type",
    "encoder_dims",
    "query_head_dims",
    "value_head_dims",
    "num_heads",
    "num_encoder_layers",
    "cnn_module_kernels",
    "left_context_len",
    "T",
    "decode_chunk_len",
)
OTHER_ONLINE_KEYS = {
    "conformer": ("T", "decode_chunk_len", "encoder_dim", "num_encoder_layers",
                  "cnn_module_kernel", "left_context", "pad_length"),
    "lstm": ("T", "decode_chunk_len", "num_encoder_layers", "d_model", "rnn_hidden_size"),
    "ebranchformer": ("T", "decode_chunk_len", "hidden_size", "intermediate_size",
                      "csgu_kernel_size", "merge_conv_kernel", "left_context_len", "num_heads",
                      "head_dim", "num_hidden_layers"),
}  # fmt: skip
ZIPFORMER_V1_STATE_KINDS = (
    "cached_len",
    "cached_avg",
    "cached_key",
    "cached_val",
    "cached_val2",
    "cached_conv1",
    "cached_conv2",
)
DTYPE_NAMES = {FLOAT: "float32", INT64: "int64", INT32: "int32"}
NUMPY_DTYPES = {FLOAT: np.float32, INT64: np.int64, INT32: np.int32}
_INT_RE = re.compile(r"^-?\d+$")
_INT_LIST_RE = re.compile(r"^-?\d+(,-?\d+)*$")


class SherpaOnnxContractError(ValueError):
    """Raised by :func:`check_sherpa_onnx_contract` with ``raise_errors=True``; lists problems."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} sherpa-onnx contract problem(s):\n{lines}")


@dataclass
class TensorSpec:
    """One declared graph input or output: name, ONNX element type and dims."""

    name: str
    elem_type: int
    dims: List[Dim]

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.elem_type, onnx.TensorProto.DataType.Name(self.elem_type))


@dataclass
class StateSpec:
    """An encoder state the contract expects: shape with -1 on the batch axis, and dtype."""

    name: str
    shape: List[int]
    batch_axis: int
    elem_type: int


@dataclass
class OnnxFileInfo:
    """What the checklist needs from one ONNX file."""

    path: Path
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    meta: Dict[str, str]
    opset: int
    ir_version: int
    uses_external_data: bool
    initializer_types: Tuple[int, ...]


def _tensor_spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    dims: List[Dim] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSpec(value_info.name, tensor_type.elem_type, dims)


def inspect_onnx_file(path: PathLike) -> OnnxFileInfo:
    """Reads signature, metadata, opset and storage facts of an ONNX file (weights not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    initializer_names = {i.name for i in model.graph.initializer}
    opset = max(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        default=0,
    )
    return OnnxFileInfo(
        path=Path(path),
        inputs=[_tensor_spec(v) for v in model.graph.input if v.name not in initializer_names],
        outputs=[_tensor_spec(v) for v in model.graph.output],
        meta={p.key: p.value for p in model.metadata_props},
        opset=opset,
        ir_version=model.ir_version,
        uses_external_data=any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
        ),
        initializer_types=tuple(sorted({t.data_type for t in model.graph.initializer})),
    )


def zipformer_v1_state_specs(
    meta: Dict[str, str], feature_dim: int = 80
) -> Tuple[List[StateSpec], List[str]]:
    """The 7n encoder states sherpa-onnx builds for ``model_type=zipformer`` from the metadata.

    ``feature_dim`` is unused (no v1 state depends on it); it keeps the signature of
    :func:`zipformer2_state_specs`.

    Returns:
      (states in input order with batch size shown as -1, problems found in the metadata).
    """
    del feature_dim
    lists, problems = _per_stack_lists(
        meta,
        ("encoder_dims", "attention_dims", "num_encoder_layers", "cnn_module_kernels",
         "left_context_len"),
    )  # fmt: skip
    if problems:
        return [], problems
    specs: List[StateSpec] = []
    for kind in ZIPFORMER_V1_STATE_KINDS:
        for i in range(len(lists["encoder_dims"])):
            layers = lists["num_encoder_layers"][i]
            dim = lists["encoder_dims"][i]
            att = lists["attention_dims"][i]
            left = lists["left_context_len"][i]
            kernel = lists["cnn_module_kernels"][i]
            shape, axis, elem = {
                "cached_len": ([layers, -1], 1, INT64),
                "cached_avg": ([layers, -1, dim], 1, FLOAT),
                "cached_key": ([layers, left, -1, att], 2, FLOAT),
                "cached_val": ([layers, left, -1, att // 2], 2, FLOAT),
                "cached_val2": ([layers, left, -1, att // 2], 2, FLOAT),
                "cached_conv1": ([layers, -1, dim, kernel - 1], 1, FLOAT),
                "cached_conv2": ([layers, -1, dim, kernel - 1], 1, FLOAT),
            }[kind]
            specs.append(StateSpec(f"{kind}_{i}", shape, axis, elem))
    for i, att in enumerate(lists["attention_dims"]):
        if att % 2:
            problems.append(f"attention_dims[{i}]={att} is odd; cached_val uses attention_dim/2")
    return specs, problems


def zipformer2_state_specs(
    meta: Dict[str, str], feature_dim: int = 80
) -> Tuple[List[StateSpec], List[str]]:
    """The 6m+2 encoder states sherpa-onnx builds for streaming ``model_type=zipformer2``."""
    lists, problems = _per_stack_lists(
        meta,
        ("encoder_dims", "query_head_dims", "value_head_dims", "num_heads",
         "num_encoder_layers", "cnn_module_kernels", "left_context_len"),
    )  # fmt: skip
    if problems:
        return [], problems
    if sum(lists["num_encoder_layers"]) < 1:
        return [], ["zipformer2 needs at least one encoder layer (batch size is read from it)"]
    specs: List[StateSpec] = []
    layer = 0
    for i, num_layers in enumerate(lists["num_encoder_layers"]):
        key_dim = lists["query_head_dims"][i] * lists["num_heads"][i]
        value_dim = lists["value_head_dims"][i] * lists["num_heads"][i]
        dim = lists["encoder_dims"][i]
        left = lists["left_context_len"][i]
        half_kernel = lists["cnn_module_kernels"][i] // 2
        for _ in range(num_layers):
            specs += [
                StateSpec(f"cached_key_{layer}", [left, -1, key_dim], 1, FLOAT),
                StateSpec(f"cached_nonlin_attn_{layer}", [1, -1, left, 3 * dim // 4], 1, FLOAT),
                StateSpec(f"cached_val1_{layer}", [left, -1, value_dim], 1, FLOAT),
                StateSpec(f"cached_val2_{layer}", [left, -1, value_dim], 1, FLOAT),
                StateSpec(f"cached_conv1_{layer}", [-1, dim, half_kernel], 0, FLOAT),
                StateSpec(f"cached_conv2_{layer}", [-1, dim, half_kernel], 0, FLOAT),
            ]
            layer += 1
    embed_freq = (((feature_dim - 1) // 2) - 1) // 2
    specs.append(StateSpec("embed_states", [-1, 128, 3, embed_freq], 0, FLOAT))
    specs.append(StateSpec("processed_lens", [-1], 0, INT64))
    return specs, problems


def _per_stack_lists(
    meta: Dict[str, str], keys: Sequence[str]
) -> Tuple[Dict[str, List[int]], List[str]]:
    """The comma-separated per-stack metadata ``keys`` as int lists, and the problems found:
    keys missing or malformed, or lists of different lengths (one entry per encoder stack)."""
    problems: List[str] = []
    lists = {key: _parse_int_list(meta, key, problems) for key in keys}
    if problems:
        return lists, problems
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1:
        return lists, [f"per-stack metadata lists differ in length: {lengths}"]
    return lists, problems


def _parse_int(meta: Dict[str, str], key: str, problems: List[str]) -> Optional[int]:
    value = meta.get(key)
    if value is None:
        problems.append(f"metadata key {key!r} is missing")
        return None
    if not _INT_RE.match(value):
        problems.append(f"metadata {key}={value!r} is not an integer")
        return None
    return int(value)


def _parse_int_list(meta: Dict[str, str], key: str, problems: List[str]) -> List[int]:
    value = meta.get(key)
    if value is None:
        problems.append(f"metadata key {key!r} is missing")
        return []
    if not _INT_LIST_RE.match(value):
        problems.append(f"metadata {key}={value!r} is not a comma-separated integer list")
        return []
    return [int(v) for v in value.split(",")]


def _is_dynamic(dim: Dim) -> bool:
    return not isinstance(dim, int)


def _check_tensor(
    spec: TensorSpec,
    elem_types: Sequence[int],
    shape: Sequence[int],
    batch_axis: int,
    problems: List[str],
) -> None:
    """Checks dtype, rank, dynamic batch axis and static sizes (-1 in ``shape`` = any size)."""
    if spec.elem_type not in elem_types:
        wanted = " or ".join(DTYPE_NAMES[t] for t in elem_types)
        problems.append(f"{spec.name!r} has dtype {spec.dtype_name}, expected {wanted}")
    if len(spec.dims) != len(shape):
        problems.append(
            f"{spec.name!r} has rank {len(spec.dims)} (dims {spec.dims}), expected {len(shape)}"
        )
        return
    if not _is_dynamic(spec.dims[batch_axis]):
        problems.append(
            f"{spec.name!r} has a static batch axis {batch_axis} "
            f"(size {spec.dims[batch_axis]}); it must be dynamic"
        )
    for axis, (declared, wanted) in enumerate(zip(spec.dims, shape)):
        if axis == batch_axis or wanted < 0 or _is_dynamic(declared):
            continue
        if declared != wanted:
            problems.append(
                f"{spec.name!r} has size {declared} on axis {axis}, "
                f"the metadata implies {wanted} (dims {spec.dims}, expected {list(shape)})"
            )


def _check_file_basics(info: OnnxFileInfo, max_opset: int, problems: List[str]) -> None:
    if info.opset > max_opset or info.opset < 7:
        problems.append(f"opset {info.opset}; use 13..{max_opset} for older sherpa-onnx builds")
    if info.ir_version > 9:
        problems.append(f"IR version {info.ir_version} > 9; older onnxruntime builds refuse it")
    if info.uses_external_data:
        problems.append("weights are stored as external data; keep one self-contained file")
    odd = [
        onnx.TensorProto.DataType.Name(t)
        for t in info.initializer_types
        if t in (onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    ]
    if odd:
        problems.append(f"weights of type {odd}; export float32 (optionally int8-quantised)")


def _check_streaming_encoder(
    info: OnnxFileInfo, specs: List[StateSpec], feature_dim: int, problems: List[str]
) -> Optional[int]:
    """Checks x, the states and the outputs; returns the declared joiner dim when static."""
    expected = 1 + len(specs)
    if len(info.inputs) != expected or len(info.outputs) != expected:
        problems.append(
            f"has {len(info.inputs)} inputs and {len(info.outputs)} outputs; the metadata "
            f"implies {expected} each (x + {len(specs)} states; encoder_out + new states)"
        )
        return None
    chunk = info.meta.get("T", "")
    t_size = int(chunk) if _INT_RE.match(chunk) else -1
    _check_tensor(info.inputs[0], (FLOAT,), [-1, t_size, feature_dim], 0, problems)
    for declared, spec in zip(info.inputs[1:], specs):
        _check_tensor(declared, (spec.elem_type,), spec.shape, spec.batch_axis, problems)
    encoder_out = info.outputs[0]
    _check_tensor(encoder_out, (FLOAT,), [-1, -1, -1], 0, problems)
    for declared, spec in zip(info.outputs[1:], specs):
        _check_tensor(declared, (spec.elem_type,), spec.shape, spec.batch_axis, problems)
    last = encoder_out.dims[-1] if len(encoder_out.dims) == 3 else None
    return last if isinstance(last, int) else None


def _check_offline_encoder(
    info: OnnxFileInfo, feature_dim: int, problems: List[str]
) -> Optional[int]:
    if len(info.inputs) != 2 or len(info.outputs) != 2:
        problems.append(
            f"offline encoder needs inputs (x, x_lens) and outputs (encoder_out, "
            f"encoder_out_lens); has {len(info.inputs)} inputs, {len(info.outputs)} outputs"
        )
        return None
    x, x_lens = info.inputs
    _check_tensor(x, (FLOAT,), [-1, -1, feature_dim], 0, problems)
    if len(x.dims) == 3 and not _is_dynamic(x.dims[1]):
        problems.append(f"{x.name!r} has a static time axis ({x.dims[1]}); it must be dynamic")
    _check_tensor(x_lens, (INT64, INT32), [-1], 0, problems)
    encoder_out, encoder_out_lens = info.outputs
    _check_tensor(encoder_out, (FLOAT,), [-1, -1, -1], 0, problems)
    _check_tensor(encoder_out_lens, (INT64, INT32), [-1], 0, problems)
    model_type = info.meta.get("model_type")
    if model_type not in OFFLINE_TRANSDUCER_MODEL_TYPES:
        problems.append(
            f"metadata model_type={model_type!r}: sherpa-onnx's C++ default (model_type='') "
            f"needs one of {OFFLINE_TRANSDUCER_MODEL_TYPES} (write 'zipformer2')"
        )
    last = encoder_out.dims[-1] if len(encoder_out.dims) == 3 else None
    return last if isinstance(last, int) else None


def check_encoder(
    info: OnnxFileInfo, streaming: bool, feature_dim: int
) -> Tuple[List[str], List[StateSpec], Optional[int]]:
    """Checks one encoder file; returns (problems, expected states, static joiner dim)."""
    problems: List[str] = []
    if not streaming:
        return problems, [], _check_offline_encoder(info, feature_dim, problems)
    model_type = info.meta.get("model_type")
    if model_type is None:
        problems.append(
            "metadata key 'model_type' is missing: sherpa-onnx crashes (segfault) "
            f"unless the caller passes model_type; write one of {ONLINE_MODEL_TYPES}"
        )
        return problems, [], None
    if model_type not in ONLINE_MODEL_TYPES:
        problems.append(f"metadata model_type={model_type!r} is not one of {ONLINE_MODEL_TYPES}")
        return problems, [], None
    if model_type in OTHER_ONLINE_KEYS:
        for key in OTHER_ONLINE_KEYS[model_type]:
            if key not in info.meta:
                problems.append(f"metadata key {key!r} (required for {model_type}) is missing")
        return problems, [], None
    required = ZIPFORMER_V1_KEYS if model_type == "zipformer" else ZIPFORMER2_KEYS
    for key in required:
        if key not in info.meta:
            problems.append(f"metadata key {key!r} (required for {model_type}) is missing")
    chunk_len = _parse_int(info.meta, "decode_chunk_len", problems)
    chunk_size = _parse_int(info.meta, "T", problems)
    if chunk_len is not None and chunk_size is not None and not 0 < chunk_len <= chunk_size:
        problems.append(f"need 0 < decode_chunk_len ({chunk_len}) <= T ({chunk_size})")
    build = zipformer_v1_state_specs if model_type == "zipformer" else zipformer2_state_specs
    specs, meta_problems = build(info.meta, feature_dim)
    problems += [p for p in meta_problems if p not in problems]
    if problems:
        return problems, specs, None
    joiner_dim = _check_streaming_encoder(info, specs, feature_dim, problems)
    return problems, specs, joiner_dim


def check_decoder(info: OnnxFileInfo, streaming: bool) -> Tuple[List[str], Optional[int]]:
    """Checks decoder.onnx; returns (problems, vocab_size from its metadata)."""
    problems: List[str] = []
    context_size = _parse_int(info.meta, "context_size", problems)
    vocab_size = _parse_int(info.meta, "vocab_size", problems)
    if context_size is not None and context_size < 1:
        problems.append(f"metadata context_size={context_size} must be >= 1")
    if vocab_size is not None and vocab_size < 2:
        problems.append(f"metadata vocab_size={vocab_size} must be >= 2 (blank + tokens)")
    if info.meta.get("streaming_model_type") == "nemo_parakeet_unified_streaming":
        problems.append("metadata streaming_model_type selects the NeMo parakeet implementation")
    if len(info.inputs) != 1:
        problems.append(f"needs exactly one input y (N, context_size); has {len(info.inputs)}")
    else:
        y_types = (INT64,) if streaming else (INT64, INT32)
        _check_tensor(info.inputs[0], y_types, [-1, context_size or -1], 0, problems)
    if len(info.outputs) != 1:
        problems.append(
            f"has {len(info.outputs)} outputs; exactly one (decoder_out) selects the icefall "
            "transducer (more selects NeMo's stateful decoder)"
        )
    else:
        _check_tensor(info.outputs[0], (FLOAT,), [-1, -1], 0, problems)
    return problems, vocab_size


def check_joiner(
    info: OnnxFileInfo, vocab_size: Optional[int], joiner_dim: Optional[int]
) -> List[str]:
    """Checks joiner.onnx: (encoder_out (N, J), decoder_out (N, J)) -> logit (N, vocab_size)."""
    problems: List[str] = []
    if len(info.inputs) != 2 or len(info.outputs) != 1:
        problems.append(
            f"needs inputs (encoder_out, decoder_out) and one output (logit); has "
            f"{len(info.inputs)} inputs, {len(info.outputs)} outputs"
        )
        return problems
    for spec in info.inputs:
        _check_tensor(spec, (FLOAT,), [-1, joiner_dim or -1], 0, problems)
    _check_tensor(info.outputs[0], (FLOAT,), [-1, vocab_size or -1], 0, problems)
    return problems


def check_tokens(path: PathLike, vocab_size: Optional[int]) -> List[str]:
    """Checks tokens.txt: ids 0..V-1 each exactly once, ``<blk>`` = 0, V = vocab_size."""
    try:
        entries = read_tokens(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return [f"cannot be read: {e}"]
    problems = []
    counts = Counter(i for _, i in entries)
    seen = set(counts)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        problems.append(f"ids listed more than once: {duplicates[:10]}")
    missing = sorted(set(range(len(seen))) - seen)
    if missing or (seen and max(seen) != len(seen) - 1):
        problems.append(f"ids are not exactly 0..{len(seen) - 1} (missing {missing[:10]})")
    if vocab_size is not None and len(seen) != vocab_size:
        problems.append(f"has {len(seen)} ids but the decoder's vocab_size is {vocab_size}")
    symbols = dict((i, s) for s, i in entries)
    if symbols.get(0) != "<blk>":
        problems.append(f"id 0 is {symbols.get(0)!r}; the transducer blank must be '<blk>' = 0")
    return problems


def _zeros(spec: StateSpec, batch: int) -> np.ndarray:
    shape = [batch if d < 0 else d for d in spec.shape]
    return np.zeros(shape, dtype=NUMPY_DTYPES[spec.elem_type])


def run_with_onnxruntime(
    encoder: OnnxFileInfo,
    decoder: OnnxFileInfo,
    joiner: OnnxFileInfo,
    states: List[StateSpec],
    streaming: bool,
    feature_dim: int = 80,
    batch: int = 2,
) -> List[str]:
    """Runs the three models once with a batch of ``batch`` as sherpa-onnx would.

    The streaming encoder gets sherpa's zero initial states (from the metadata), the decoder
    gets the initial context ``[-1]*(context_size-1) + [0]`` and the joiner one encoder frame.
    Returns problems (wrong output counts, shapes, dtypes, non-finite values, runtime errors).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    problems: List[str] = []
    rng = np.random.default_rng(0)
    try:
        sessions = [
            ort.InferenceSession(str(f.path), options, providers=["CPUExecutionProvider"])
            for f in (encoder, decoder, joiner)
        ]
    except Exception as e:  # onnxruntime raises several unrelated types
        return [f"onnxruntime cannot load the models: {e}"]
    enc_sess, dec_sess, join_sess = sessions
    if streaming:
        chunk = int(encoder.meta["T"])
        x = rng.standard_normal((batch, chunk, feature_dim)).astype(np.float32)
        feeds = [x] + [_zeros(s, batch) for s in states]
    else:
        frames = 100
        x = rng.standard_normal((batch, frames, feature_dim)).astype(np.float32)
        feeds = [x, np.array([frames, frames - 20], dtype=np.int64)]
        if encoder.inputs[1].elem_type == INT32:
            feeds[1] = feeds[1].astype(np.int32)
    names = [i.name for i in enc_sess.get_inputs()]
    try:
        outputs = enc_sess.run(None, dict(zip(names, feeds)))
    except Exception as e:
        return [f"encoder.onnx fails in onnxruntime with batch {batch}: {e}"]
    encoder_out = outputs[0]
    if encoder_out.ndim != 3 or encoder_out.shape[0] != batch or encoder_out.dtype != np.float32:
        problems.append(
            f"encoder_out came back {encoder_out.dtype} {encoder_out.shape}, "
            f"expected float32 ({batch}, T', J)"
        )
        return problems
    if streaming:
        for spec, fed, new in zip(states, feeds[1:], outputs[1:]):
            if new.shape != fed.shape or new.dtype != fed.dtype:
                problems.append(
                    f"encoder new state for {spec.name} came back {new.dtype} {new.shape}; "
                    f"it must equal the input {fed.dtype} {fed.shape}"
                )
    if not np.isfinite(encoder_out).all():
        problems.append("encoder_out has non-finite values on random input")
    context_size = int(decoder.meta.get("context_size", "2"))
    y = np.array([[-1] * (context_size - 1) + [0]] * batch, dtype=np.int64)
    try:
        (decoder_out,) = dec_sess.run(None, {dec_sess.get_inputs()[0].name: y})
    except Exception as e:
        return problems + [f"decoder.onnx fails on the initial context {y[0].tolist()}: {e}"]
    if not np.isfinite(decoder_out).all():
        problems.append(f"decoder_out is not finite for the initial context {y[0].tolist()}")
    join_names = [i.name for i in join_sess.get_inputs()]
    try:
        (logit,) = join_sess.run(
            None, {join_names[0]: encoder_out[:, 0], join_names[1]: decoder_out}
        )
    except Exception as e:
        return problems + [f"joiner.onnx fails on (encoder_out[:, 0], decoder_out): {e}"]
    vocab_size = decoder.meta.get("vocab_size")
    if logit.shape != (batch, int(vocab_size or logit.shape[-1])):
        problems.append(f"joiner logit has shape {logit.shape}, expected ({batch}, {vocab_size})")
    return problems


def check_sherpa_onnx_contract(
    encoder: PathLike,
    decoder: PathLike,
    joiner: PathLike,
    tokens: Optional[PathLike] = None,
    streaming: bool = True,
    feature_dim: int = 80,
    max_opset: int = 17,
    run_onnxruntime: bool = True,
    raise_errors: bool = False,
) -> List[str]:
    """Checks exported transducer files against the sherpa-onnx contract.

    Checked (contract section 13): single self-contained files, opset <= ``max_opset`` and
    IR <= 9; encoder ``model_type`` and every metadata key of its type (streaming
    ``zipformer``/``zipformer2`` fully, other online types by key presence); input/output
    counts, order, dtypes and shapes of the encoder states as computed from the metadata;
    dynamic batch axes on every tensor (and dynamic T offline); decoder ``y`` int64
    ``(N, context_size)`` with exactly one output; joiner ``(N, J), (N, J) -> (N, V)`` with
    ``V == vocab_size``; tokens.txt ids ``0..V-1`` with ``<blk>`` = 0. With
    ``run_onnxruntime`` the models also run once in onnxruntime with a batch of 2.

    Args:
      encoder, decoder, joiner: the ``.onnx`` files.
      tokens: optional tokens.txt to check against the decoder's ``vocab_size``.
      streaming: True for ``OnlineRecognizer`` models, False for offline encoders.
      feature_dim: fbank dimension (80).
      max_opset: highest accepted default-domain opset.
      run_onnxruntime: also run the models once (catches fixed batch sizes, dropped states).
      raise_errors: raise :class:`SherpaOnnxContractError` instead of returning problems.

    Returns:
      Problems as ``"<file name>: <what is wrong>"`` strings; empty when all checks pass.
    """
    problems: List[str] = []
    infos: Dict[str, OnnxFileInfo] = {}
    for role, path in (("encoder", encoder), ("decoder", decoder), ("joiner", joiner)):
        path = Path(path)
        if not path.is_file():
            problems.append(f"{role}: file {path} does not exist")
            continue
        try:
            infos[role] = inspect_onnx_file(path)
        except Exception as e:  # protobuf raises DecodeError and others
            problems.append(f"{path.name}: not a readable ONNX file ({e})")
            continue
        file_problems: List[str] = []
        _check_file_basics(infos[role], max_opset, file_problems)
        problems += [f"{path.name}: {p}" for p in file_problems]

    vocab_size = joiner_dim = None
    states: List[StateSpec] = []
    if "encoder" in infos:
        found, states, joiner_dim = check_encoder(infos["encoder"], streaming, feature_dim)
        problems += [f"{infos['encoder'].path.name}: {p}" for p in found]
    if "decoder" in infos:
        found, vocab_size = check_decoder(infos["decoder"], streaming)
        problems += [f"{infos['decoder'].path.name}: {p}" for p in found]
        dec_out = infos["decoder"].outputs[0].dims if infos["decoder"].outputs else []
        if joiner_dim is None and len(dec_out) == 2 and isinstance(dec_out[1], int):
            joiner_dim = dec_out[1]
    if "joiner" in infos:
        found = check_joiner(infos["joiner"], vocab_size, joiner_dim)
        problems += [f"{infos['joiner'].path.name}: {p}" for p in found]
    if tokens is not None:
        problems += [f"{Path(tokens).name}: {p}" for p in check_tokens(tokens, vocab_size)]
    if run_onnxruntime and not problems:
        problems += [
            f"onnxruntime: {p}"
            for p in run_with_onnxruntime(
                infos["encoder"], infos["decoder"], infos["joiner"], states, streaming, feature_dim
            )
        ]
    if problems and raise_errors:
        raise SherpaOnnxContractError(problems)
    return problems
