"""Faults lose nothing: Ctrl-C, SIGTERM and kill -9 during training, a diverging loss, a full
disk, an unwritable run folder; and resume=<run dir> continues exactly where a run stopped."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from dcgan import loop
from dcgan.errors import OutputError, TrainingDiverged, UserInputError
from dcgan.files import atomic_path, save_png
from dcgan.run import AtomicCheckpointIO, checkpoint_to_train_from, read_checkpoint, remove_stale_temporaries
from tests.helpers import REPO, check, cpu_only, nan_loss_at, record_builds, run_script


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended (exit {process.returncode}) before the condition held")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out")
        time.sleep(0.05)


def mtime(path: Path) -> float:
    return path.stat().st_mtime_ns if path.exists() else 0


def weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, weights_only=True)
    optimizer = {f"opt{i}.{k}": v for i, o in enumerate(ckpt["optimizer_states"]) for k, v in _flat(o["state"])}
    return ckpt["state_dict"] | optimizer


def _flat(state: dict) -> list[tuple[str, torch.Tensor]]:
    return [(f"{p}.{name}", t) for p, s in state.items() for name, t in s.items()]


# Short epochs (8 batches of 32, tiny networks). The learning rate decays with the run's batch
# count, so a resume that miscounts batches, or skips or repeats one, changes the weights.
EPOCHS = (
    "experiment=smoke",
    "eval.fid=false",
    "eval.classifier=false",
    "trainer.limit_train_batches=8",
    "trainer.max_epochs=3",
    "optimizer.lr_decay_start=0.5",
)


class Result(NamedTuple):
    returncode: int
    output: str  # stdout and stderr


def fault_run(
    data_dir: Path, record: Path, fault: str, at: tuple[int, int], *overrides: str, rank: int | None = None
) -> Result:
    """train.py with ``fault`` at batch ``at`` = (epoch, batch) (tests/fault_at.py), in the
    process of ``rank`` (None: all), what it trained appended to ``record``."""
    spec = ",".join(map(str, [record, fault, *at, *([] if rank is None else [rank])]))
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fault_at.py"), *overrides],
        cwd=REPO,
        env=cpu_only(os.environ | {"DCGAN_DATA_DIR": str(data_dir), "FAULT_AT": spec}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    return Result(result.returncode, result.stdout)


def trained(record: Path) -> tuple[list[tuple[int, int, list[int]]], list[tuple[int, str]]]:
    """From a fault_at record: the batches trained, in order, as (epoch, batch, labels), and the
    epochs' end states, as (epoch, digest)."""
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    batches = [(x["epoch"], x["batch"], x["labels"]) for x in lines if "batch" in x]
    return batches, [(x["epoch"], x["state"]) for x in lines if "state" in x]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A run of EPOCHS never interrupted; its record is ``record.jsonl`` inside."""
    run = tmp_path_factory.mktemp("uninterrupted")
    result = fault_run(data_dir, run / "record.jsonl", "none", (0, 0), *EPOCHS, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.output[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_mid_epoch_then_kill_9_then_resume_match_an_uninterrupted_run(
    tmp_path: Path, data_dir: Path, uninterrupted: Path, name: str
) -> None:
    """SIGTERM or Ctrl-C after batch 3 of epoch 2 saves interrupted.ckpt there; a resume from it
    trains from batch 4 on, and kill -9 after batch 2 of epoch 3 leaves epoch 2's last.ckpt; a
    resume from that trains epoch 3 again. The batches trained, each epoch's end state (the
    interrupted epoch's included) and the final checkpoint are those of the uninterrupted run."""
    run, record = tmp_path / "run", tmp_path / "record.jsonl"
    last, interrupted = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "interrupted.ckpt"

    result = fault_run(data_dir, record, name, (2, 3), *EPOCHS, f"hydra.run.dir={run}")
    what = {"SIGTERM": "SIGTERM", "SIGINT": "Ctrl-C"}[name]
    assert result.returncode == 128 + signal.Signals[name], result.output[-3000:]
    assert (
        f"interrupted: {what} at epoch 2, batch 3: saved the training state to {interrupted}. "
        f"Continue with: python train.py resume={run}" in result.output
    )
    if name == "SIGINT":
        assert "Ctrl-C: stopping after this batch and saving a checkpoint" in result.output
    assert "Traceback" not in result.output
    assert "Detected KeyboardInterrupt" not in result.output  # Lightning's, beside ours
    assert "litlogger" not in result.output  # Lightning's advert for a cloud logger
    ckpt = torch.load(interrupted, weights_only=True)
    assert loop.data_position(ckpt) == (1, 3)
    assert ckpt["global_step"] == 2 * (8 + 3)  # one D and one G step per finished batch, no more
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and what in metrics["error"]

    result = fault_run(data_dir, record, "SIGKILL", (3, 2), f"resume={run}")
    assert result.returncode == -signal.SIGKILL, result.output[-3000:]
    assert f"Resuming {run} from {interrupted}, at epoch 2, batch 4\n" in result.output
    assert "not resumable" not in result.output  # Lightning's warning for a loader without a state
    assert torch.load(last, weights_only=True)["epoch"] == 1  # epoch 2's checkpoint, whole

    result = fault_run(data_dir, record, "none", (0, 0), f"resume={run}")
    assert result.returncode == 0, result.output[-3000:]
    assert f"Resuming {run} from {last}\n" in result.output  # newer than interrupted.ckpt
    batches, states = trained(record)
    expected_batches, expected_states = trained(uninterrupted / "record.jsonl")
    epoch = [(e, b) for e in (1, 2, 3) for b in range(1, 9)]
    assert [(e, b) for e, b, _ in batches] == [*epoch[:16], (3, 1), (3, 2), *epoch[16:]]
    labels = {(e, b): x for e, b, x in expected_batches}
    assert all(x == labels[e, b] for e, b, x in batches), "a batch of other images than the uninterrupted run's"
    assert states == expected_states, "the state at an epoch's end differs from the uninterrupted run's"
    expected, got = weights(uninterrupted / "checkpoints" / "last.ckpt"), weights(last)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed run differs from the uninterrupted one"
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["status"], metrics["epochs"], metrics["batches"]) == ("completed", 3, 24)
    assert metrics["resumed_from"] == str(last)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_saves(tmp_path: Path, data_dir: Path) -> None:
    """Ctrl-C twice as batch 3 of epoch 2 starts: that batch is not trained (one Ctrl-C lets it
    finish), and the state after batch 2 is saved."""
    run, record = tmp_path / "run", tmp_path / "record.jsonl"
    result = fault_run(data_dir, record, "SIGINT2", (2, 3), *EPOCHS, f"hydra.run.dir={run}")
    assert result.returncode == 128 + signal.SIGINT, result.output[-3000:]
    assert "interrupted: Ctrl-C at epoch 2, batch 2: saved the training state" in result.output
    assert "Traceback" not in result.output
    assert [(e, b) for e, b, _ in trained(record)[0]][-1] == (2, 2)
    ckpt = torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True)
    assert loop.data_position(ckpt) == (1, 2) and ckpt["global_step"] == 2 * (8 + 2)


@pytest.mark.slow
def test_a_diverged_run_exits_1_and_records_the_failure(tmp_path: Path, data_dir: Path) -> None:
    run = tmp_path / "run"
    result = fault_run(data_dir, tmp_path / "record.jsonl", "nan", (2, 3), *EPOCHS, f"hydra.run.dir={run}")
    assert result.returncode == 1, result.output[-3000:]
    assert "error: d_loss is nan at epoch 2, batch 3 (batch 11 of the run). Training stopped; " in result.output
    assert "Traceback" not in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"].startswith("TrainingDiverged: d_loss is nan")


def last_batch_per_rank(record: Path) -> dict[int, tuple[int, int]]:
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    return {x["rank"]: (x["epoch"], x["batch"]) for x in lines if "batch" in x}


@pytest.mark.slow
def test_under_ddp_a_nan_on_one_rank_stops_every_rank_at_that_batch(tmp_path: Path, data_dir: Path) -> None:
    run, record = tmp_path / "run", tmp_path / "record.jsonl"
    result = fault_run(data_dir, record, "nan", (2, 3), *EPOCHS, "trainer=ddp_cpu", f"hydra.run.dir={run}", rank=1)
    assert result.returncode == 1, result.output[-3000:]
    assert "error: d_loss is nan at epoch 2, batch 3 (batch 11 of the run)" in result.output  # rank 1
    assert "error: d_loss is not finite on another process at epoch 2, batch 3" in result.output  # rank 0
    assert last_batch_per_rank(record) == {0: (2, 2), 1: (2, 2)}  # neither made batch 3's update
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "not finite on another process" in metrics["error"]


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_under_ddp_sigterm_saves_one_checkpoint_and_every_rank_exits(tmp_path: Path, data_dir: Path, rank: int) -> None:
    """SIGTERM to one rank (``kill`` reaches one process; rank 0 is the one a user sees) after
    batch 3 of epoch 2: both ranks stop after that batch, one interrupted.ckpt is written, the
    run exits 143. (With Lightning's SIGTERM handler, which broadcasts from inside the signal
    handler, this hung once in three runs.)"""
    run, record = tmp_path / "run", tmp_path / "record.jsonl"
    result = fault_run(
        data_dir, record, "SIGTERM", (2, 3), *EPOCHS, "trainer=ddp_cpu", f"hydra.run.dir={run}", rank=rank
    )
    assert result.returncode == 128 + signal.SIGTERM, result.output[-3000:]
    assert "Traceback" not in result.output
    assert last_batch_per_rank(record) == {0: (2, 3), 1: (2, 3)}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["interrupted.ckpt", "last.ckpt"]
    assert loop.data_position(torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True)) == (1, 3)
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"


QUICK = ("experiment=smoke", "eval.fid=false", "logger=csv", "+trainer.enable_progress_bar=false")


def test_ctrl_c_before_training_begins_saves_nothing(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the data (or the FID reference) loads: there is no training state to save,
    and an interrupted.ckpt already there (a resume's) must not be replaced by fresh weights."""
    from dcgan.datasets import ImageDataModule
    from dcgan.errors import TrainingInterrupted
    from dcgan.train import train

    interrupted = tmp_path / "run" / "checkpoints" / "interrupted.ckpt"
    interrupted.parent.mkdir(parents=True)
    interrupted.write_bytes(b"a mid-epoch state")

    def ctrl_c(self: ImageDataModule, stage: str | None = None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageDataModule, "setup", ctrl_c)
    with pytest.raises(TrainingInterrupted, match="^Ctrl-C before training began; nothing to save$"):
        train(compose_cfg(*QUICK))
    assert interrupted.read_bytes() == b"a mid-epoch state"


def test_sigterm_at_an_epoch_end_resumes_with_the_whole_next_epoch(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during an epoch's end-of-epoch work (FID, grids) is acted on after the epoch has
    counted as done: the resumed run starts the next epoch at its first batch, also when
    ``trainer.limit_train_batches`` shortens the epochs, and ends as an unstopped run does."""
    from dcgan.errors import TrainingInterrupted
    from dcgan.module import DCGAN
    from dcgan.train import train

    settings = (*QUICK, "trainer.limit_train_batches=3", "trainer.max_epochs=3")
    train(compose_cfg(*settings, run="whole"))

    epoch_end = DCGAN.on_train_epoch_end

    def sigterm_after_epoch_1(self: DCGAN) -> None:
        epoch_end(self)
        if self.current_epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(DCGAN, "on_train_epoch_end", sigterm_after_epoch_1)
    with pytest.raises(TrainingInterrupted, match="^SIGTERM at the end of epoch 1: saved the training state"):
        train(compose_cfg(*settings, run="stopped"))
    monkeypatch.undo()
    interrupted = tmp_path / "stopped" / "checkpoints" / "interrupted.ckpt"
    assert loop.data_position(torch.load(interrupted, weights_only=True)) == (1, 0)
    train(compose_cfg(*settings, f"ckpt_path={interrupted}", run="resumed"))
    whole, resumed = (weights(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("whole", "resumed"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.slow
def test_kill_9_while_a_checkpoint_is_written_leaves_the_previous_one(tmp_path: Path) -> None:
    """A process writing a 200 MB checkpoint over last.ckpt is killed mid-write, many times
    over: last.ckpt always loads, and is the previous whole version."""
    path = tmp_path / "last.ckpt"
    writer = (
        "import sys, torch\n"
        "from dcgan.run import AtomicCheckpointIO\n"
        "io = AtomicCheckpointIO()\n"
        "for version in range(1, 1000):\n"
        "    io.save_checkpoint({'version': version, 'blob': torch.full((50_000_000,), float(version))}, sys.argv[1])\n"
    )
    AtomicCheckpointIO().save_checkpoint({"version": 0, "blob": torch.zeros(1)}, path)
    for _ in range(3):
        process = subprocess.Popen([sys.executable, "-c", writer, str(path)], cwd=REPO)
        wait_for(lambda: any(p.stat().st_size > 1_000_000 for p in tmp_path.glob(".last.ckpt.tmp*")), process, 60)
        process.kill()
        process.wait()
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["blob"][-1].item() == ckpt["version"]  # whole: its last element is there
    assert list(tmp_path.glob(".last.ckpt.tmp*")), "the killed writer's temporary file is left behind"
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_full_disk_while_saving_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"version": 1}, path)

    def disk_full(obj: object, f: Path) -> None:
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OutputError, match=f"could not write {path}: No space left on device .the previous file is"):
        AtomicCheckpointIO().save_checkpoint({"version": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no half-written file


def test_unwritable_output_gives_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    expected = f"could not create the folder {blocker} for x.png: File exists"
    with pytest.raises(OutputError, match=expected), atomic_path(blocker / "x.png") as tmp:
        tmp.write_bytes(b"")
    # A bug in a writer is not reported as a disk problem.
    with pytest.raises(KeyError), atomic_path(tmp_path / "y.png"):
        raise KeyError("bug")
    from PIL import Image

    save_png(Image.new("L", (2, 2)), tmp_path / "ok.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "ok.png"]


@pytest.mark.slow
def test_run_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = run_script("train.py", "experiment=smoke", f"hydra.run.dir={tmp_path / 'a-file' / 'run'}")
    assert result.returncode == 2
    assert f"error: cannot write to hydra.run.dir={tmp_path / 'a-file' / 'run'}: Not a directory" in result.stderr
    assert "Traceback" not in result.stderr


# fused=false: the loss is read at each update; true: the update is dropped on the device
# and the losses are read at logging steps (the default on a GPU). Both must behave alike.
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.filterwarnings("ignore:The number of training batches")  # log_every_n_steps > 5, on purpose
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fused: bool
) -> None:
    import dcgan.train

    calls = nan_loss_at(monkeypatch, call=8)  # epoch 2 (5 batches per epoch), batch 3
    built = record_builds(monkeypatch)
    cfg = compose_cfg(
        "experiment=smoke",
        "eval.fid=false",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=50",
        "+trainer.enable_progress_bar=false",
        f"speed.fused_optimizer={str(fused).lower()}",
    )
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        dcgan.train.train(cfg)
    message = str(info.value)
    assert message.startswith("d_loss is nan at epoch 2, batch 3 (batch 8 of the run). Training stopped; ")
    # Read at once, or at the next logging step: epoch 2's last batch (log_every_n_steps > 5).
    assert len(calls) == (10 if fused else 8)
    # The bad update was not made: D's weights are finite and D stepped on the good batches only
    # (stopped before batch 8's update; fused: batch 8's update dropped, batches 9, 10 made).
    [(_, model, trainer)] = built
    assert all(torch.isfinite(p).all() for p in model.discriminator.parameters())
    steps = [int(next(iter(opt.state.values()))["step"]) for opt in trainer.optimizers]  # G, D
    assert steps == ([10, 9] if fused else [7, 7])
    assert f"the last good state is {run_dir / 'checkpoints' / 'last.ckpt'}" in message
    assert f"python train.py resume={run_dir}" in message and "model.nonfinite_loss=skip" in message
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and last["global_step"] == 10  # the end of epoch 1
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()  # a divergence is not saved
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("TrainingDiverged: d_loss is nan at epoch 2")


@pytest.mark.parametrize("fused", [False, True])
def test_nan_losses_can_be_skipped_and_counted(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fused: bool
) -> None:
    from dcgan.train import train

    nan_loss_at(monkeypatch, call=3)
    cfg = compose_cfg(
        "experiment=smoke",
        "eval.fid=false",
        "model.nonfinite_loss=skip",
        "+trainer.enable_progress_bar=false",
        f"speed.fused_optimizer={str(fused).lower()}",
    )
    record = train(cfg)
    assert record["status"] == "completed" and record["metrics"]["train/nonfinite_skipped"] == 1
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["nonfinite_skipped"] == 1
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    # D skipped one of its 10 steps; G took all 10.
    steps = [int(next(iter(opt["state"].values()))["step"]) for opt in last["optimizer_states"]]
    assert steps == [10, 9]


@pytest.mark.slow
def test_resume_errors(tmp_path: Path, smoke_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)  # resuming writes into the run folder

    def error(*overrides: str) -> str:
        result = run_script("train.py", *overrides)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        return result.stderr

    assert f"error: resume={tmp_path / 'nope'} does not exist; give a run directory" in error(
        f"resume={tmp_path / 'nope'}"
    )
    assert f"error: resume={tmp_path}: {tmp_path} has no .hydra/config.yaml" in error(f"resume={tmp_path}")
    assert "would change dataset from 'mnist'" in error(f"resume={run}", "dataset=fashion_mnist")
    assert "give resume=<run dir> or ckpt_path=<file>, not both" in error(
        f"resume={run}", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    )
    assert "has already trained 2 epochs; set trainer.max_epochs above 2" in error(f"resume={run}")
    assert (run / ".hydra" / "config.yaml").read_text() == (smoke_run / ".hydra" / "config.yaml").read_text()


@pytest.mark.slow
def test_a_refused_resume_changes_nothing_and_an_accepted_one_saves_its_settings(
    tmp_path: Path, smoke_run: Path, data_dir: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    config, overrides, record = run / ".hydra" / "config.yaml", run / ".hydra" / "overrides.yaml", run / "metrics.json"
    before = [f.read_text() for f in (config, overrides, record)]

    def refused(*settings: str) -> str:
        result = run_script("train.py", f"resume={run}", *settings, env={"DCGAN_DATA_DIR": str(data_dir)})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        return result.stderr

    assert "model.g_width: checkpoint 8, config 16" in refused("trainer.max_epochs=3", "model.g_width=16")
    assert "optimizer.generator.lr=-1" in refused("trainer.max_epochs=3", "optimizer.lr_g=-1")
    assert "is larger than" in refused("trainer.max_epochs=3", "dataset.batch_size=100000")  # found at data setup
    # The run's config, overrides and record are those of its last training, so the plain
    # resume the error messages advise still works.
    assert [f.read_text() for f in (config, overrides, record)] == before

    check(
        run_script(
            "train.py", f"resume={run}", "trainer.max_epochs=3", "eval.fid=false", env={"DCGAN_DATA_DIR": str(data_dir)}
        )
    )
    saved = OmegaConf.load(config)
    assert saved.trainer.max_epochs == 3 and saved.eval.fid is False
    assert list(OmegaConf.load(overrides)) == ["experiment=smoke", "trainer.max_epochs=3", "eval.fid=false"]
    result = json.loads(record.read_text())
    assert (result["status"], result["epochs"]) == ("completed", 3)
    assert result["overrides"] == ["experiment=smoke", "trainer.max_epochs=3", "eval.fid=false"]
    # Kept by the next resume; giving a setting the run already has adds nothing.
    assert "has already trained 3 epochs; set trainer.max_epochs above 3" in refused("trainer.max_epochs=3")
    assert list(OmegaConf.load(overrides)) == ["experiment=smoke", "trainer.max_epochs=3", "eval.fid=false"]


def _not_checkpoints(folder: Path) -> dict[str, Path]:
    """Files a user may pass as a checkpoint that are not one, by what they hold."""
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, folder / "whole.ckpt")
    whole = (folder / "whole.ckpt").read_bytes()
    contents: dict[str, bytes] = {
        "text": b"this is not a checkpoint\n",  # torch.load: IndexError: pop from empty list
        "other text": b"not a checkpoint\n",  # torch.load: UnpicklingError
        "one word": b"hello",  # torch.load: KeyError: 101
        "empty": b"",
        "random bytes": bytes(range(256)) * 8,
        "truncated": whole[: len(whole) // 2],
        "a pickle of a dict": pickle.dumps({"state_dict": {}, "hyper_parameters": {}}),
    }
    files = {}
    for name, data in contents.items():
        files[name] = folder / f"{name.replace(' ', '_')}.ckpt"
        files[name].write_bytes(data)
    files["a zip that is not torch's"] = folder / "other.zip"
    with zipfile.ZipFile(files["a zip that is not torch's"], "w") as archive:
        archive.writestr("notes.txt", "hello")
    files["a torch archive with a broken pickle"] = folder / "broken.ckpt"
    with zipfile.ZipFile(files["a torch archive with a broken pickle"], "w") as archive:
        archive.writestr("broken/data.pkl", "garbage")
    return files


def test_every_file_that_is_not_a_checkpoint_gets_the_clear_message(tmp_path: Path) -> None:
    """Whatever a file holds, reading it as a checkpoint (ckpt_path=, resume=, generate.py's
    checkpoint=: all through read_checkpoint) ends in the one message that names it."""
    for name, path in _not_checkpoints(tmp_path).items():
        with pytest.raises(UserInputError, match=rf"^{re.escape(str(path))} is not a readable checkpoint \(") as info:
            checkpoint_to_train_from(path)
        assert "\n" not in str(info.value), name
    torch.save([1, 2, 3], tmp_path / "list.ckpt")  # readable, but not ours
    with pytest.raises(UserInputError, match="list.ckpt is not a DCGAN checkpoint written by train.py"):
        read_checkpoint(tmp_path / "list.ckpt")
