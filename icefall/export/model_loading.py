"""Loading the weights an export or decoding script asks for with icefall's flags.

``--epoch E --avg A`` averages ``epoch-{E-A+1..E}.pt``; ``--iter I --avg A`` averages the A
newest ``checkpoint-*.pt`` up to batch I; with ``--use-averaged-model 1`` the running averaged
model stored in the checkpoints is used instead, over the interval (start, end].
"""

import argparse
import logging
from pathlib import Path
from typing import Callable, Dict, List, Union

import torch
import torch.nn as nn

from icefall.checkpoint import (
    average_checkpoints,
    average_checkpoints_with_averaged_model,
    find_checkpoints,
    load_checkpoint,
)
from icefall.utils import num_tokens, read_token_table, str2bool

PathLike = Union[str, Path]


def _require_files(filenames: List[str], flags: str) -> None:
    missing = [f for f in filenames if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint(s) {missing} not found (needed by {flags})")


def checkpoint_description(epoch: int, iteration: int, avg: int, use_averaged_model: bool) -> str:
    """A suffix naming what was loaded, e.g. ``epoch-30-avg-9`` or ``iter-2000-avg-3``."""
    name = f"iter-{iteration}" if iteration > 0 else f"epoch-{epoch}"
    return f"{name}-avg-{avg}" + ("-use-averaged-model" if use_averaged_model else "")


def load_model_weights(
    model: nn.Module,
    exp_dir: PathLike,
    epoch: int,
    iteration: int = 0,
    avg: int = 1,
    use_averaged_model: bool = False,
    device: Union[str, torch.device] = "cpu",
) -> None:
    """Loads (averaged) checkpoint weights into ``model`` in place, as icefall's scripts do.

    Raises:
      FileNotFoundError: naming the missing checkpoint files and the flags that asked for them.
      ValueError: for impossible flag combinations (e.g. ``--use-averaged-model 1 --avg E``
        with E >= epoch: the average needs the checkpoint *before* the interval).
    """
    exp_dir = Path(exp_dir)
    flags = f"--epoch {epoch} --iter {iteration} --avg {avg} --use-averaged-model " + str(
        int(use_averaged_model)
    )
    if avg < 1:
        raise ValueError(f"--avg must be >= 1, got {avg}")
    if iteration > 0:
        available = find_checkpoints(exp_dir, iteration=-iteration)
        needed = avg + 1 if use_averaged_model else avg
        if len(available) < needed:
            raise FileNotFoundError(
                f"{flags} needs {needed} checkpoint-*.pt files up to batch {iteration} in "
                f"{exp_dir}, found {len(available)}"
            )
        if use_averaged_model:
            start, end = available[avg], available[0]
            logging.info(f"Averaged model over ({start}, {end}]")
            state = average_checkpoints_with_averaged_model(start, end, device=device)
        else:
            logging.info(f"Averaging {available[:avg]}")
            state = average_checkpoints(available[:avg], device=device)
        model.load_state_dict(state)
        return
    if use_averaged_model:
        start_epoch = epoch - avg
        if start_epoch < 1:
            raise ValueError(
                f"{flags}: the averaged model needs epoch-{start_epoch}.pt; use --avg < --epoch "
                "or --use-averaged-model 0"
            )
        start, end = str(exp_dir / f"epoch-{start_epoch}.pt"), str(exp_dir / f"epoch-{epoch}.pt")
        _require_files([start, end], flags)
        logging.info(f"Averaged model over epochs ({start_epoch}, {epoch}]")
        model.load_state_dict(average_checkpoints_with_averaged_model(start, end, device=device))
        return
    filenames = [str(exp_dir / f"epoch-{i}.pt") for i in range(max(1, epoch - avg + 1), epoch + 1)]
    _require_files(filenames, flags)
    if len(filenames) == 1:
        load_checkpoint(filenames[0], model, strict=True)
    else:
        logging.info(f"Averaging {filenames}")
        model.load_state_dict(average_checkpoints(filenames, device=device))


def add_checkpoint_arguments(
    parser: argparse.ArgumentParser, epoch: int = 30, avg: int = 9
) -> None:
    """icefall's checkpoint-selection flags: ``--epoch --iter --avg --use-averaged-model
    --exp-dir``."""
    parser.add_argument(
        "--epoch", type=int, default=epoch, help="use epoch-{epoch}.pt (and older ones, --avg)"
    )
    parser.add_argument(
        "--iter",
        type=int,
        default=0,
        help="if > 0, use checkpoint-{iter}.pt and older checkpoint-*.pt instead of --epoch",
    )
    parser.add_argument(
        "--avg", type=int, default=avg, help="number of checkpoints (or epochs) to average"
    )
    parser.add_argument(
        "--use-averaged-model",
        type=str2bool,
        default=True,
        help="average with the running averaged model stored in the checkpoints "
        "(needs epoch-{epoch - avg}.pt)",
    )
    parser.add_argument(
        "--exp-dir",
        type=Path,
        default=Path("pruned_transducer_stateless7_streaming/exp"),
        help="directory with the checkpoints; exported files are written here",
    )


def set_vocabulary_params(params: dict, tokens: PathLike) -> Dict[str, int]:
    """Reads tokens.txt and sets ``params["blank_id"]``, ``["unk_id"]`` and ``["vocab_size"]``.

    Returns:
      The token table ``{symbol: id}``.
    """
    if not Path(tokens).is_file():
        raise FileNotFoundError(f"tokens file {tokens} not found (set --tokens)")
    token_table = read_token_table(tokens)
    if "<blk>" not in token_table:
        raise ValueError(f"{tokens} has no <blk> symbol")
    params["blank_id"] = token_table["<blk>"]
    params["unk_id"] = token_table.get("<unk>", params["blank_id"])
    params["vocab_size"] = num_tokens(token_table) + 1
    return token_table


def load_model_from_params(
    params: dict, get_transducer_model: Callable[[dict], nn.Module]
) -> nn.Module:
    """Builds the model from ``params`` and loads the checkpoints the flags select (eval mode).

    ``params`` needs ``exp_dir, epoch, iter, avg, use_averaged_model`` and what
    ``get_transducer_model`` needs (including ``vocab_size``/``blank_id``, see
    :func:`set_vocabulary_params`).
    """
    model = get_transducer_model(params)
    load_model_weights(
        model,
        params["exp_dir"],
        epoch=params["epoch"],
        iteration=params["iter"],
        avg=params["avg"],
        use_averaged_model=params["use_averaged_model"],
    )
    model.to("cpu").eval()
    num_params = sum(p.numel() for p in model.parameters())
    logging.info(f"Number of model parameters: {num_params}")
    return model


def add_corpus_argument(parser: argparse.ArgumentParser) -> None:
    """``--corpus`` (default: the ``egs/<corpus>/ASR`` folder we run in), which selects the
    recipe's per-corpus defaults (model size, lang dir)."""
    from icefall.data.corpora import CORPORA

    parser.add_argument(
        "--corpus",
        default=None,
        choices=sorted(CORPORA),
        help="corpus whose defaults apply (default: detected from the current egs/<corpus>/ASR)",
    )


def add_export_arguments(parser: argparse.ArgumentParser, epoch: int = 30, avg: int = 9) -> None:
    """The flags of every export script: ``--corpus``, the checkpoint selection of
    :func:`add_checkpoint_arguments`, ``--tokens`` and ``--context-size``."""
    add_corpus_argument(parser)
    add_checkpoint_arguments(parser, epoch=epoch, avg=avg)
    parser.add_argument("--tokens", default="data/lang_bpe_500/tokens.txt", help="tokens.txt")
    parser.add_argument("--context-size", type=int, default=2, help="decoder context size")
