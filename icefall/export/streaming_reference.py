"""sherpa-onnx's streaming transducer loop, re-done in Python (numpy; no torch needed).

It reproduces what ``OnlineRecognizer`` does with a ``zipformer`` (v1) model so that token
sequences can be compared id for id:

* features: kaldi-native-fbank, 80 bins, dither 0, ``snip_edges=False``, ``high_freq=-400``,
  on the samples followed by 0.66 s of zeros (:func:`sherpa_fbank`);
* chunking: windows of ``T`` frames advancing by ``decode_chunk_len`` while
  ``processed + T < num_frames`` (sherpa's ``is_ready``), states fed back;
* greedy search: initial context ``[-1] * (context_size - 1) + [blank]``, at most one symbol
  per encoder frame, blank (0) and ``<unk>`` never emitted, decoder re-run after each emission.

The model is given as three callables, so the same loop runs ONNX files
(:class:`OnnxStreamingTransducer`) or PyTorch modules.
"""

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from icefall.export.sherpa_decode import load_wav_files

PathLike = Union[str, Path]
SAMPLE_RATE = 16000
TAIL_PADDING_SECONDS = 0.66

EncoderStep = Callable[[np.ndarray, List[np.ndarray]], Tuple[np.ndarray, List[np.ndarray]]]
DecoderFn = Callable[[np.ndarray], np.ndarray]
JoinerFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def sherpa_fbank(
    samples: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    tail_padding_seconds: float = TAIL_PADDING_SECONDS,
) -> np.ndarray:
    """Log-mel features as sherpa-onnx computes them for a finished stream.

    Args:
      samples: (S,) float32 audio in [-1, 1] at ``sample_rate`` (must be 16000; resample first).
      tail_padding_seconds: zeros appended before ``input_finished``.

    Returns:
      (num_frames, 80) float32.
    """
    import kaldi_native_fbank as knf

    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"expected {SAMPLE_RATE} Hz audio, got {sample_rate} Hz; resample first")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.samp_freq = float(SAMPLE_RATE)
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = -400.0
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SAMPLE_RATE, np.asarray(samples, dtype=np.float32).tolist())
    tail = np.zeros(int(tail_padding_seconds * SAMPLE_RATE), dtype=np.float32)
    fbank.accept_waveform(SAMPLE_RATE, tail.tolist())
    fbank.input_finished()
    frames = [fbank.get_frame(i) for i in range(fbank.num_frames_ready)]
    return np.array(frames, dtype=np.float32).reshape(-1, 80)


def resample(samples: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of (S,) float32 audio (scipy); returns the input when rates match."""
    if sample_rate == target_rate:
        return samples.astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(sample_rate), int(target_rate))
    out = resample_poly(samples, target_rate // g, int(sample_rate) // g)
    return out.astype(np.float32)


def streaming_greedy_search(
    features: np.ndarray,
    encoder_step: EncoderStep,
    decoder: DecoderFn,
    joiner: JoinerFn,
    init_states: List[np.ndarray],
    chunk_size: int,
    chunk_shift: int,
    context_size: int,
    blank_id: int = 0,
    unk_id: Optional[int] = None,
) -> Tuple[List[int], int]:
    """Chunk-wise greedy decoding of one utterance, step for step like sherpa-onnx.

    Args:
      features: (num_frames, 80) from :func:`sherpa_fbank`.
      encoder_step: ``(x (1, chunk_size, 80), states) -> (encoder_out (1, T', J), new states)``.
      decoder: ``y (1, context_size) int64 -> (1, J)``.
      joiner: ``(1, J), (1, J) -> (1, vocab_size)``.
      init_states: batch-1 initial encoder states.
      chunk_size: metadata ``T``; chunk_shift: metadata ``decode_chunk_len``.
      unk_id: treated like blank when given (sherpa does this for ``<unk>``).

    Returns:
      (emitted token ids, number of encoder calls).
    """
    states = list(init_states)
    context = [-1] * (context_size - 1) + [blank_id]
    decoder_out = decoder(np.array([context], dtype=np.int64))
    hyp: List[int] = []
    processed = calls = 0
    while processed + chunk_size < features.shape[0]:
        x = features[processed : processed + chunk_size][None]
        encoder_out, states = encoder_step(x, states)
        processed += chunk_shift
        calls += 1
        for t in range(encoder_out.shape[1]):
            logits = joiner(encoder_out[:, t], decoder_out)
            token = int(np.argmax(logits[0]))
            if token == blank_id or token == unk_id:
                continue
            hyp.append(token)
            context = context[1:] + [token]
            decoder_out = decoder(np.array([context], dtype=np.int64))
    return hyp, calls


class OnnxStreamingTransducer:
    """The three ONNX files of a streaming ``zipformer`` transducer, run with onnxruntime.

    Args:
      encoder, decoder, joiner: ``.onnx`` paths (float or int8).
      num_threads: onnxruntime intra-op threads.
    """

    def __init__(
        self, encoder: PathLike, decoder: PathLike, joiner: PathLike, num_threads: int = 1
    ):
        import onnxruntime as ort

        from icefall.export.sherpa_contract import zipformer_v1_state_specs

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(encoder), options, providers=providers)
        self.decoder = ort.InferenceSession(str(decoder), options, providers=providers)
        self.joiner = ort.InferenceSession(str(joiner), options, providers=providers)
        encoder_meta = self.encoder.get_modelmeta().custom_metadata_map
        decoder_meta = self.decoder.get_modelmeta().custom_metadata_map
        if encoder_meta.get("model_type") != "zipformer":
            raise ValueError(
                f"{encoder}: model_type={encoder_meta.get('model_type')!r}, expected 'zipformer'"
            )
        self.chunk_size = int(encoder_meta["T"])
        self.chunk_shift = int(encoder_meta["decode_chunk_len"])
        self.context_size = int(decoder_meta["context_size"])
        self.vocab_size = int(decoder_meta["vocab_size"])
        self.state_specs, problems = zipformer_v1_state_specs(encoder_meta)
        if problems:
            raise ValueError(f"{encoder}: bad metadata: {problems}")
        self._encoder_inputs = [i.name for i in self.encoder.get_inputs()]
        self._joiner_inputs = [i.name for i in self.joiner.get_inputs()]
        self._decoder_input = self.decoder.get_inputs()[0].name

    def init_states(self, batch_size: int = 1) -> List[np.ndarray]:
        """Zero states as sherpa-onnx builds them (int64 ``cached_len``, float32 others)."""
        states = []
        for spec in self.state_specs:
            shape = [batch_size if d < 0 else d for d in spec.shape]
            dtype = np.int64 if spec.name.startswith("cached_len") else np.float32
            states.append(np.zeros(shape, dtype=dtype))
        return states

    def run_encoder(
        self, x: np.ndarray, states: Sequence[np.ndarray]
    ) -> Tuple[np.ndarray, List[np.ndarray]]:
        """x: (N, T, 80) float32 -> (encoder_out (N, T', J), new states)."""
        outputs = self.encoder.run(None, dict(zip(self._encoder_inputs, [x, *states])))
        return outputs[0], list(outputs[1:])

    def run_decoder(self, y: np.ndarray) -> np.ndarray:
        """y: (N, context_size) int64 -> (N, J)."""
        return self.decoder.run(None, {self._decoder_input: y})[0]

    def run_joiner(self, encoder_out: np.ndarray, decoder_out: np.ndarray) -> np.ndarray:
        """(N, J), (N, J) -> (N, vocab_size) logits."""
        feeds = dict(zip(self._joiner_inputs, [encoder_out, decoder_out]))
        return self.joiner.run(None, feeds)[0]

    def greedy_search(self, features: np.ndarray, unk_id: Optional[int] = None) -> List[int]:
        """Decodes (num_frames, 80) features (from :func:`sherpa_fbank`) into token ids."""
        hyp, _ = streaming_greedy_search(
            features,
            self.run_encoder,
            self.run_decoder,
            self.run_joiner,
            self.init_states(1),
            self.chunk_size,
            self.chunk_shift,
            self.context_size,
            unk_id=unk_id,
        )
        return hyp


def read_sound_files(
    paths: Sequence[str],
) -> Tuple[List[Tuple[str, np.ndarray, int]], List[str]]:
    """Reads sound files (any format soundfile knows, any sample rate, mono-mixed).

    Returns:
      (``[(path, samples (S,) float32, sample_rate)]`` for the readable files,
      one error message per file that could not be read).
    """
    loaded, errors = [], []
    for path in paths:
        try:
            loaded.extend(load_wav_files([path]))
        except ValueError as e:
            errors.append(str(e))
            continue
        if loaded[-1][1].size == 0:
            loaded.pop()
            errors.append(f"audio file {path} has no samples")
    return loaded, errors


def ids_to_text(token_ids: Sequence[int], id_to_symbol: Dict[int, str]) -> str:
    """Joins BPE pieces into text: ``"▁HE" "LLO"`` -> ``"HELLO"`` (``▁`` starts a word)."""
    return "".join(id_to_symbol[i] for i in token_ids).replace("\u2581", " ").strip()
