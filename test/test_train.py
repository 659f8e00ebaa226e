"""train.py of the streaming Zipformer recipe: flags, corpus presets, and short training runs on
a subset of the ``ci`` tiny corpus (loss goes down, 2-process gloo DDP, exact stop-and-resume,
non-finite batches skipped)."""

import gzip
import json
import logging
import math
import sys
from pathlib import Path
from typing import List

import pytest
import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs/librispeech/ASR/pruned_transducer_stateless7_streaming"
if str(RECIPE) not in sys.path:
    sys.path.insert(0, str(RECIPE))

import train  # noqa: E402

# A very small model (the reference "tiny" encoder) so that each run takes seconds.
SMALL_MODEL_ARGS = [
    "--num-encoder-layers=1,1,1,1,1",
    "--feedforward-dims=64,64,64,64,64",
    "--nhead=2,2,2,2,2",
    "--encoder-dims=48,48,48,48,48",
    "--attention-dims=32,32,32,32,32",
    "--encoder-unmasked-dims=32,32,32,32,32",
    "--decoder-dim=64",
    "--joiner-dim=64",
]
NUM_TRAIN_CUTS = 12
NUM_VALID_CUTS = 3


def write_subset(source: Path, target: Path, num_cuts: int) -> None:
    """Copy the first ``num_cuts`` lines of a cut manifest (feature paths stay relative)."""
    with gzip.open(source, "rt") as f:
        lines = [line for _, line in zip(range(num_cuts), f)]
    with gzip.open(target, "wt") as f:
        f.writelines(lines)


@pytest.fixture(scope="module")
def ci_subset(tiny_ci_dir: Path, tmp_path_factory) -> Path:
    """A manifest dir with a few train/dev cuts of the ci corpus (and its noise cuts)."""
    manifest_dir = tmp_path_factory.mktemp("fbank")
    fbank = tiny_ci_dir / "data" / "fbank"
    write_subset(fbank / "tiny_cuts_train.jsonl.gz", manifest_dir / "tiny_cuts_train.jsonl.gz", 12)
    write_subset(fbank / "tiny_cuts_dev.jsonl.gz", manifest_dir / "tiny_cuts_dev.jsonl.gz", 3)
    (manifest_dir / "musan_cuts.jsonl.gz").symlink_to(fbank / "musan_cuts.jsonl.gz")
    return manifest_dir


def training_argv(manifest_dir: Path, exp_dir: Path, *extra: str) -> List[str]:
    return [
        "--corpus=tiny",
        f"--manifest-dir={manifest_dir}",
        f"--exp-dir={exp_dir}",
        "--num-epochs=2",
        "--max-duration=10",
        "--num-buckets=2",
        "--num-workers=0",
        "--num-threads=1",
        "--tensorboard=0",
        "--save-every-n=3",
        "--average-period=1",
        "--keep-last-k=2",
        "--log-interval=1",
        "--valid-interval=1000",
        "--warm-step=8",
        "--lr-batches=100",
        "--lr-epochs=1",
        "--seed=7",
        *SMALL_MODEL_ARGS,
        *extra,
    ]


def load_model_state(filename: Path) -> dict:
    return torch.load(filename, map_location="cpu", weights_only=False)["model"]


# ------------------------------------------------------------------------------------ flags


def test_parser_defaults_are_icefall_defaults():
    args = train.get_parser().parse_args([])
    expected = {
        "world_size": 1,
        "master_port": 12354,
        "tensorboard": True,
        "num_epochs": 30,
        "start_epoch": 1,
        "start_batch": 0,
        "exp_dir": "pruned_transducer_stateless7_streaming/exp",
        "bpe_model": "data/lang_bpe_500/bpe.model",
        "base_lr": 0.05,
        "scalar_lr_scale": 0.1,
        "lr_batches": 5000,
        "lr_epochs": 3.5,
        "context_size": 2,
        "prune_range": 5,
        "lm_scale": 0.25,
        "am_scale": 0.0,
        "simple_loss_scale": 0.5,
        "seed": 42,
        "print_diagnostics": False,
        "inf_check": False,
        "save_every_n": 2000,
        "keep_last_k": 30,
        "average_period": 200,
        "use_fp16": False,
        "num_encoder_layers": "2,4,3,2,4",
        "feedforward_dims": "1024,1024,2048,2048,1024",
        "nhead": "8,8,8,8,8",
        "encoder_dims": "384,384,384,384,384",
        "attention_dims": "192,192,192,192,192",
        "encoder_unmasked_dims": "256,256,256,256,256",
        "zipformer_downsampling_factors": "1,2,4,8,2",
        "cnn_module_kernels": "31,31,31,31,31",
        "decoder_dim": 512,
        "joiner_dim": 512,
        "short_chunk_size": 50,
        "num_left_chunks": 4,
        "decode_chunk_len": 32,
    }
    assert {key: getattr(args, key) for key in expected} == expected
    params = train.get_params()
    assert (params.log_interval, params.reset_interval, params.valid_interval) == (50, 200, 3000)
    assert (params.feature_dim, params.subsampling_factor, params.warm_step) == (80, 4, 2000)


def test_corpus_presets_apply_to_any_parser_and_explicit_flags_win():
    args = train.get_args(["--corpus", "tiny", "--decoder-dim", "128"])
    tiny = train.CORPUS_DEFAULTS["tiny"]
    assert args.encoder_dims == tiny["encoder_dims"]
    assert args.bpe_model == "data/lang_bpe_256/bpe.model"
    assert args.max_duration == tiny["max_duration"]
    assert args.decoder_dim == 128

    librispeech = train.get_args(["--corpus", "librispeech"])
    assert librispeech.encoder_dims == "384,384,384,384,384"
    assert librispeech.bpe_model == "data/lang_bpe_500/bpe.model"

    # A decode-style parser: only the flags it has get the tiny defaults.
    import argparse

    parser = argparse.ArgumentParser()
    train.add_model_arguments(parser)
    parser.add_argument("--epoch", type=int, default=30)
    parser.add_argument("--tokens", type=str, default="data/lang_bpe_500/tokens.txt")
    assert train.apply_corpus_defaults(parser, ["--corpus=tiny"]) == "tiny"
    decode_args = parser.parse_args([])
    assert decode_args.tokens == "data/lang_bpe_256/tokens.txt"
    assert decode_args.epoch == tiny["num_epochs"]
    assert decode_args.joiner_dim == tiny["joiner_dim"]
    with pytest.raises(ValueError, match="unknown corpus"):
        train.apply_corpus_defaults(argparse.ArgumentParser(), ["--corpus", "nope"])


def test_corpus_detected_from_the_recipe_folder(monkeypatch):
    monkeypatch.chdir(REPO / "egs" / "tiny" / "ASR")
    monkeypatch.setenv("PWD", str(REPO / "egs" / "tiny" / "ASR"))
    parser = train.get_parser()
    assert train.apply_corpus_defaults(parser, []) == "tiny"
    assert (
        parser.parse_args([]).num_encoder_layers
        == train.CORPUS_DEFAULTS["tiny"]["num_encoder_layers"]
    )


def test_warm_up_loss_scales():
    params = train.get_params()
    params.simple_loss_scale = 0.5
    params.warm_step = 2000
    expected = {0: (1.0, 0.1), 1000: (0.75, 0.55), 2000: (0.5, 1.0), 5000: (0.5, 1.0)}
    for batch, scales in expected.items():
        params.batch_idx_train = batch
        assert train.get_loss_scales(params) == pytest.approx(scales)


def test_tiny_model_size():
    args = train.get_args(["--corpus", "tiny"])
    params = train.get_run_params(args)
    params.vocab_size, params.blank_id = 256, 0
    model = train.get_transducer_model(params)
    num_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < num_params < 6_000_000, num_params


def test_ctc_head_is_optional_and_its_loss_is_torch_ctc():
    args = train.get_args(["--corpus", "tiny", "--use-ctc", "1", "--ctc-loss-scale", "0.3"])
    params = train.get_run_params(args)
    params.vocab_size, params.blank_id = 256, 0
    torch.manual_seed(0)
    model = train.get_transducer_model(params).eval()
    assert any(k.startswith("ctc_output.") for k in model.state_dict())
    params.use_ctc = False
    assert not any(
        k.startswith("ctc_output.") for k in train.get_transducer_model(params).state_dict()
    )

    x = torch.randn(2, 120, 80)
    x_lens = torch.tensor([120, 90])
    y = [[5, 6, 7], [8]]
    with torch.no_grad():
        simple, pruned, ctc = model(x=x, x_lens=x_lens, y=y)
        encoder_out, encoder_out_lens = model.encoder(x, x_lens)
        log_probs = torch.log_softmax(model.ctc_output[1](encoder_out), dim=-1)
    expected = sum(
        torch.nn.functional.ctc_loss(
            log_probs[i, : encoder_out_lens[i]],
            torch.tensor(tokens),
            [int(encoder_out_lens[i])],
            [len(tokens)],
            blank=0,
            reduction="sum",
        )
        for i, tokens in enumerate(y)
    )
    assert torch.isfinite(simple) and torch.isfinite(pruned)
    assert ctc.item() == pytest.approx(expected.item(), rel=1e-5)


def test_combine_losses_adds_the_scaled_ctc_loss():
    params = train.get_params()
    params.simple_loss_scale, params.ctc_loss_scale = 0.5, 0.2
    params.batch_idx_train = params.warm_step  # final scales: 0.5 and 1.0
    simple, pruned, ctc = torch.tensor(4.0), torch.tensor(3.0), torch.tensor(10.0)
    assert train.combine_losses(params, (simple, pruned)).item() == pytest.approx(5.0)
    assert train.combine_losses(params, (simple, pruned, ctc)).item() == pytest.approx(7.0)


def test_optimizer_uses_the_learning_rate_flags():
    args = train.get_args(["--corpus", "tiny", "--base-lr", "0.07", "--scalar-lr-scale", "0.3"])
    params = train.get_run_params(args)
    params.vocab_size, params.blank_id = 256, 0
    optimizer, scheduler = train.get_optimizer_and_scheduler(
        params, train.get_transducer_model(params)
    )
    group = optimizer.param_groups[0]
    assert (group["scalar_lr_scale"], scheduler.base_lrs[0]) == (0.3, 0.07)
    assert (scheduler.lr_batches, scheduler.lr_epochs) == (params.lr_batches, params.lr_epochs)


# ------------------------------------------------------------------------------------ training


def test_training_lowers_the_loss_and_writes_outputs(ci_subset, tiny_ci_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_ci_dir)
    exp_dir = tmp_path / "exp"
    args = train.get_args(
        training_argv(ci_subset, exp_dir, "--num-epochs=3", "--tensorboard=1", "--base-lr=0.08")
    )
    model = train.run(rank=0, world_size=1, args=args)

    params = train.get_run_params(args)
    sp = train.load_bpe_model(params)
    train.fix_random_seed(params.seed)
    initial = train.get_transducer_model(params)
    data = train.AsrDataModule(args)
    batches = list(data.valid_dataloaders(data.train_cuts()))
    params.batch_idx_train = params.warm_step  # final loss scales for both models

    def loss_per_frame(m) -> float:
        info = train.compute_validation_loss(params, m, sp, batches)
        return info["loss"] / info["frames"]

    before, after = loss_per_frame(initial), loss_per_frame(model)
    assert after < 0.8 * before, (before, after)

    for name in ["epoch-1.pt", "epoch-3.pt", "best-train-loss.pt", "best-valid-loss.pt"]:
        assert (exp_dir / name).is_file(), name
    checkpoints = sorted(exp_dir.glob("checkpoint-*.pt"))
    assert 1 <= len(checkpoints) <= 2  # --keep-last-k 2
    saved = torch.load(exp_dir / "epoch-3.pt", map_location="cpu", weights_only=False)
    assert saved["model_avg"] is not None and saved["cur_epoch"] == 3
    assert list(saved["model"].keys()) == list(model.state_dict().keys())
    logs = list((exp_dir / "log").glob("log-train-*"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "Epoch 1, batch 0 (global 1): loss" in text and "s audio/s" in text
    assert list((exp_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_stop_and_resume_equals_uninterrupted_run(ci_subset, tiny_ci_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_ci_dir)
    full_dir = tmp_path / "full"
    train.run(0, 1, train.get_args(training_argv(ci_subset, full_dir, "--keep-last-k=10")))
    reference = load_model_state(full_dir / "epoch-2.pt")

    # A run stopped after batch 3 (mid epoch 1) leaves checkpoint-3.pt behind.
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "checkpoint-3.pt").write_bytes((full_dir / "checkpoint-3.pt").read_bytes())
    saved = torch.load(resumed_dir / "checkpoint-3.pt", map_location="cpu", weights_only=False)
    assert saved["cur_epoch"] == 1 and "rng_states" in saved and saved["sampler"] is not None
    train.run(0, 1, train.get_args(training_argv(ci_subset, resumed_dir, "--start-batch=3")))
    resumed = load_model_state(resumed_dir / "epoch-2.pt")
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name

    # Resuming at an epoch boundary (--start-epoch 2 loads epoch-1.pt) also matches.
    epoch_dir = tmp_path / "epoch"
    epoch_dir.mkdir()
    (epoch_dir / "epoch-1.pt").write_bytes((full_dir / "epoch-1.pt").read_bytes())
    train.run(0, 1, train.get_args(training_argv(ci_subset, epoch_dir, "--start-epoch=2")))
    from_epoch = load_model_state(epoch_dir / "epoch-2.pt")
    for name in reference:
        assert torch.equal(from_epoch[name], reference[name]), name


def _ddp_worker(rank: int, world_size: int, argv: List[str], cwd: str, out_dir: str) -> None:
    import os

    os.chdir(cwd)
    model = train.run(rank, world_size, train.get_args(argv))
    torch.save(model.state_dict(), Path(out_dir) / f"rank-{rank}.pt")


def test_two_process_gloo_ddp_keeps_ranks_identical(ci_subset, tiny_ci_dir, tmp_path):
    exp_dir = tmp_path / "exp"
    argv = training_argv(
        ci_subset,
        exp_dir,
        "--num-epochs=1",
        "--master-port=29561",
        "--max-duration=5",
        "--keep-last-k=10",
        "--save-every-n=2",
    )
    mp.spawn(
        _ddp_worker,
        args=(2, argv, str(tiny_ci_dir), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    rank0 = torch.load(tmp_path / "rank-0.pt")
    rank1 = torch.load(tmp_path / "rank-1.pt")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    saved = load_model_state(exp_dir / "epoch-1.pt")
    for name in rank0:
        assert torch.equal(saved[name], rank0[name]), name

    checkpoints = sorted(p.name for p in exp_dir.glob("checkpoint-*.pt"))
    assert checkpoints, "no checkpoint-*.pt written"
    assert not list(exp_dir.glob(".*.tmp")), "leftover temporary checkpoint files"
    logs = sorted((exp_dir / "log").glob("log-train-*"))
    assert len(logs) == 2
    saving = [log.read_text().count("Saving checkpoint") for log in logs]
    # Only rank 0 writes: one line per epoch/checkpoint file, none on rank 1.
    assert sorted(saving) == [0, len(checkpoints) + 1], saving


def test_non_finite_loss_batch_is_skipped_and_counted(
    ci_subset, tiny_ci_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tiny_ci_dir)
    args = train.get_args(training_argv(ci_subset, tmp_path / "exp"))
    params = train.get_run_params(args)
    params.cur_epoch = 1
    sp = train.load_bpe_model(params)
    train.fix_random_seed(params.seed)
    model = train.get_transducer_model(params)
    optimizer = train.ScaledAdam(model.parameters(), lr=params.base_lr, clipping_scale=2.0)
    scheduler = train.Eden(optimizer, params.lr_batches, params.lr_epochs)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    data = train.AsrDataModule(args)
    batches = list(data.valid_dataloaders(data.train_cuts()))[:3]
    assert len(batches) == 3
    batches[1]["inputs"][0, :20] = float("nan")

    with caplog.at_level(logging.WARNING):
        train.train_one_epoch(
            params, model, optimizer, scheduler, sp, batches, [], scaler, model_avg=None
        )
    assert params.num_skipped_batches == 1
    assert params.batch_idx_train == 3
    first_state = next(iter(optimizer.state.values()))
    assert first_state["step"] == 2  # trained on the two good batches only
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "non-finite loss" in caplog.text and "1 skipped so far" in caplog.text
    assert math.isfinite(params.train_loss)


def test_json_log_of_params_is_readable():
    params = train.get_run_params(train.get_args(["--corpus=tiny"]))
    # str(params) is what the log shows at start-up; it must be valid JSON.
    assert json.loads(str(params))["encoder_dims"] == train.CORPUS_DEFAULTS["tiny"]["encoder_dims"]


def test_grad_scale_babysitting_regrows_and_stops_with_advice():
    from icefall.err import GradScaleTooSmallError

    scaler = torch.amp.GradScaler("cpu", init_scale=0.5)
    scaler.scale(torch.ones(()))  # initialises the scale tensor
    assert train.babysit_grad_scaler(scaler, 100) == 0.5
    assert scaler.get_scale() == 1.0  # a scale below 1 is doubled
    scaler.update(1e-6)
    with pytest.raises(GradScaleTooSmallError, match="base-lr"):
        train.babysit_grad_scaler(scaler, 200)
