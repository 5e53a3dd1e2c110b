"""End to end: train.py and generate.py as a user runs them, in subprocesses, on real MNIST."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import DictConfig
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dcgan.errors import UserInputError
from dcgan.loop import epochs_trained
from dcgan.module import DCGAN
from dcgan.run import Checkpoint, check_resumable, read_checkpoint
from dcgan.train import train
from tests.helpers import REPO, check, cpu_only, run_script

pytestmark = pytest.mark.slow

LOSSES = ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake")


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_run_writes_checkpoint_events_and_grids(smoke_run: Path) -> None:
    assert (smoke_run / ".hydra" / "config.yaml").is_file()
    assert (smoke_run / "checkpoints" / "last.ckpt").is_file()
    acc = events(smoke_run)
    for tag in LOSSES:
        assert [e.step for e in acc.Scalars(tag)] == list(range(10)), tag  # log_every_n_steps=1
    assert len(acc.Images("samples")) == 2  # one grid per epoch
    for epoch in (1, 2):
        with Image.open(smoke_run / "samples" / f"epoch_{epoch:04d}.png") as grid:
            assert grid.format == "PNG"
            assert grid.size == (4 * 28 + 5 * 2,) * 2  # 16 fixed samples, 4x4 with 2 px padding
    assert "dataset:" in (smoke_run / "tensorboard" / "hparams.yaml").read_text()


def test_run_logs_fid_and_keeps_the_best_weights(smoke_run: Path) -> None:
    acc = events(smoke_run)
    fids = [e.value for e in acc.Scalars("val/fid")]
    assert len(fids) == 2 and all(0 < f < 1000 for f in fids)  # one evaluation per epoch
    assert [e.value for e in acc.Scalars("val/fid_best")] == pytest.approx([fids[0], min(fids)])
    *records, final = [json.loads(line) for line in (smoke_run / "fid.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["fid"] for r in records] == pytest.approx(fids)
    first = records[0]
    assert (first["num_samples"], first["num_reference"]) == (16, 64)
    # (resize and feature_network are labels of the method, constants of the code)
    assert first["reference"] | {"feature_network": "-", "resize": "-"} == {
        "dataset": "mnist",
        "split": "train",  # best.ckpt is chosen on training images; the test split reports
        "image_size": 28,
        "channels": 1,
        "num_samples": 64,
        "feature_network": "-",
        "resize": "-",
        "source": "",
    }
    best = torch.load(smoke_run / "checkpoints" / "best.ckpt", weights_only=True)
    best_epoch = 1 + fids.index(min(fids))
    assert best["callbacks"]["FIDCallback"] == {"best_fid": pytest.approx(min(fids)), "best_epoch": best_epoch}
    assert best["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == best_epoch
    # After training: the chosen weights once against the test split, which the choice never saw.
    assert (final["checkpoint"], final["epoch"], final["selected_by"]["fid"]) == ("best.ckpt", best_epoch, min(fids))
    assert (final["num_samples"], final["num_reference"], final["reference"]["split"]) == (16, 64, "test")
    assert final["fid"] != pytest.approx(min(fids))  # another reference, another number
    record = json.loads((smoke_run / "metrics.json").read_text())
    assert record["fid_final"] == pytest.approx(final["fid"]) and record["fid_best"] == pytest.approx(min(fids))
    # ... and in TensorBoard, at the run's last batch, for the HPARAMS tab.
    [fid_final] = acc.Scalars("val/fid_final")
    assert fid_final.value == pytest.approx(final["fid"]) and fid_final.step == acc.Scalars("val/fid")[-1].step


def test_docs_name_every_key_metrics_json_has(smoke_run: Path) -> None:
    """docs/scaling.md's paragraph on metrics.json names each key a run writes (a resume adds
    resumed_from; a failed run, error)."""
    docs = (REPO / "docs" / "scaling.md").read_text()
    paragraph = docs[docs.index("ends by writing `metrics.json`") :].split("\n\n")[0]
    named = set(re.findall(r"`(\w+)`", paragraph))
    record = json.loads((smoke_run / "metrics.json").read_text())
    assert set(record) | {"resumed_from", "error"} <= named, set(record) - named


def test_hparams_tab_gets_the_settings(smoke_run: Path) -> None:
    """TensorBoard's HPARAMS tab reads each run's settings from an hparams session summary in
    its event files; with no experiment summary, TensorBoard lists the settings that differ
    between the runs first and shows every scalar's latest value beside them (seen in a browser
    on a two-job sweep)."""
    from tensorboard.plugins.hparams import metadata

    content = events(smoke_run).PluginTagToContent(metadata.PLUGIN_NAME)
    assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    session = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    settings = {k: getattr(v, v.WhichOneof("kind")) for k, v in session.hparams.items()}
    assert settings["model.g_width"] == 8 and settings["dataset.name"] == "mnist"
    assert settings["trainer.max_epochs"] == 2 and settings["seed"] == 42
    assert settings["model.augment"] == "[]" and settings["optimizer.lr_decay_start"] == "None"
    # what a run is, not where it writes: no paths or constructor names
    assert not [k for k in settings if k.startswith(("paths.", "logger.", "callbacks.")) or "_target_" in k]
    assert "trainer.default_root_dir" not in settings and "eval.every_n_epochs" in settings


def test_score_command_prints_one_json_line(smoke_run: Path) -> None:
    result = check(
        run_script(
            "generate.py", "mode=fid", f"checkpoint={smoke_run}", "fid.num_samples=16", "fid.reference_samples=64"
        )
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["checkpoint"] == str((smoke_run / "checkpoints" / "best.ckpt").resolve())
    assert record["generator"] == "raw"  # the smoke run keeps no average of G's weights
    assert (record["num_samples"], record["num_reference"], record["reference"]["split"]) == (16, 64, "test")
    assert json.loads(Path(record["out"]).read_text())["fid"] == record["fid"]
    assert Path(record["out"]) == (smoke_run / "eval" / "fid-best-n16-test.json").resolve()
    # Same generator, latents and reference as the score at the end of training: the same FID.
    final = json.loads((smoke_run / "fid.jsonl").read_text().splitlines()[-1])
    assert record["fid"] == pytest.approx(final["fid"], rel=1e-4)
    # The same images by the classifier training used (the smoke run's quick one, from the cache).
    assert sum(record["class_histogram"]) == 16 and 1 <= record["classes_covered"] <= 10
    in_training = json.loads((smoke_run / "classes.jsonl").read_text().splitlines()[-1])
    assert record["classifier_test_accuracy"] == in_training["classifier_test_accuracy"] < 0.99


def test_checkpoint_alone_rebuilds_the_generator(smoke_run: Path) -> None:
    model = DCGAN.load_from_checkpoint(smoke_run / "checkpoints" / "last.ckpt", weights_only=True)
    images = model.generate(model.fixed_noise)
    assert images.shape == (16, 1, 28, 28)
    assert model.hparams.g_width == 8


def test_resume_continues_at_the_saved_step(smoke_run: Path, tmp_path: Path, data_dir: Path) -> None:
    before = torch.load(smoke_run / "checkpoints" / "last.ckpt", weights_only=True)
    # A best FID that no epoch can beat: carried on, it keeps best.ckpt from being written.
    before["callbacks"]["FIDCallback"] = {"best_fid": 0.0, "best_epoch": 2}
    last = tmp_path / "last.ckpt"
    torch.save(before, last)
    resumed = tmp_path / "resumed"
    check(
        run_script(
            "train.py",
            "experiment=smoke",
            "trainer.max_epochs=3",
            f"ckpt_path={last}",
            f"hydra.run.dir={resumed}",
            env={"DCGAN_DATA_DIR": str(data_dir)},
        )
    )
    # The resumed run trains epoch 3 only: batches 10..14.
    assert [e.step for e in events(resumed).Scalars("train/d_loss")] == list(range(10, 15))
    assert sorted(p.name for p in (resumed / "samples").iterdir()) == ["epoch_0003.png"]
    after = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert (epochs_trained(before), epochs_trained(after)) == (2, 3)
    assert after["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 15
    assert torch.equal(before["state_dict"]["fixed_noise"], after["state_dict"]["fixed_noise"])
    # Adam's step counters carried on from the checkpoint: 10 + 5 for both G and D.
    steps = [int(next(iter(opt["state"].values()))["step"]) for opt in after["optimizer_states"]]
    assert steps == [15, 15]
    # The best FID so far is carried on: best.ckpt is only written for a better one.
    assert after["callbacks"]["FIDCallback"] == {"best_fid": 0.0, "best_epoch": 2}
    assert not (resumed / "checkpoints" / "best.ckpt").exists()


def test_generate_writes_a_grid(smoke_run: Path, tmp_path: Path) -> None:
    result = check(run_script("generate.py", f"checkpoint={smoke_run}", f"out_dir={tmp_path}", "grid.num_images=9"))
    assert result.stdout.splitlines() == [f"Wrote 1 file to {tmp_path}:", "  grid-best-seed0.png"]
    with Image.open(tmp_path / "grid-best-seed0.png") as grid:
        assert grid.size == (3 * 28 + 4 * 2,) * 2


def user_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a run refused for bad input: exit 2, no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr + result.stdout
    return result.stderr


@pytest.mark.parametrize(
    ("override", "options"),
    [
        ("dataset=cifar10", ("fashion_mnist", "folder", "mnist")),
        ("logger=wandb", ("csv", "tensorboard")),
        ("loss=wgan", ("hinge", "ls", "ns", "wgan_gp")),
        ("optimizer=sgd", ("adam", "ttur")),
    ],
)
def test_unknown_group_option_lists_the_options(
    compose_cfg: Callable[..., DictConfig], override: str, options: tuple[str, ...]
) -> None:
    group, name = override.split("=")
    with pytest.raises(MissingConfigException) as info:
        compose_cfg(override)
    message = str(info.value)
    assert f"Could not find '{group}/{name}'" in message and f"Available options in '{group}':" in message
    assert all(option in message for option in options)


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    """What train.py prints for bad input (the errors themselves are tested in-process)."""
    stderr = user_error(run_script("train.py", "dataset.image_size=32", f"hydra.run.dir={tmp_path}"))
    assert stderr == "error: dataset.image_size=32 is not supported; supported sizes are 28, 64, 128\n"
    # A config Hydra cannot compose is an input mistake too: exit 2 (Hydra's own is 1).
    stderr = user_error(run_script("train.py", "dataset=cifar10", f"hydra.run.dir={tmp_path / 'cifar'}"))
    assert stderr == "error: dataset=cifar10 is not an option of dataset; choose one of fashion_mnist, folder, mnist\n"
    assert not (tmp_path / "cifar").exists()
    stderr = user_error(run_script("train.py", "eval.num_sample=500", f"hydra.run.dir={tmp_path / 'typo'}"))
    assert stderr == (
        "error: eval.num_sample=500: eval.num_sample is not a setting (did you mean eval.num_samples?); "
        "`python train.py --cfg job` lists them\n"
    )


def test_missing_dataset_offline(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unreachable proxy makes torchvision's download fail at once, as offline.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(UserInputError) as info:
        train(compose_cfg("experiment=smoke", f"paths.data_dir={tmp_path}"))
    message = str(info.value)
    assert f"mnist train images not found: expected {tmp_path}/MNIST/raw/train-images-idx3-ubyte.gz" in message
    assert "the download failed" in message and "DCGAN_DATA_DIR" in message


def test_empty_folder(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=f"^dataset.path={tmp_path / 'empty'} holds no images"):
        train(compose_cfg("experiment=folder64", f"dataset.path={tmp_path / 'empty'}"))


def test_ctrl_c_before_training_starts_marks_the_run_interrupted(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the run folder exists but training has not started (loading the data):
    metrics.json says interrupted, and the KeyboardInterrupt goes on to entry_point's one line."""
    import dcgan.train

    def ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dcgan.train, "build", ctrl_c)
    cfg = compose_cfg("experiment=smoke")
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == "KeyboardInterrupt: Ctrl-C before training began"


def test_folder_without_path(compose_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(UserInputError, match="^required setting.s. not given: dataset.path"):
        train(compose_cfg("experiment=folder64"))


@pytest.mark.slow
def test_generate_with_bad_input(tmp_path: Path) -> None:
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    stderr = user_error(run_script("generate.py", f"checkpoint={tmp_path / 'notes.ckpt'}", f"out_dir={tmp_path}"))
    assert stderr == (
        f"error: {tmp_path / 'notes.ckpt'} is not a readable checkpoint (not the zip archive torch.save writes); "
        "it may be truncated or not a .ckpt file\n"
    )


def test_resume_refuses_other_network_settings_and_finished_runs(smoke_run: Path, tmp_path: Path) -> None:
    last = smoke_run / "checkpoints" / "last.ckpt"
    ckpt = Checkpoint.read(last)
    hparams = ckpt.hparams
    check_resumable(ckpt, hparams, max_epochs=3)  # compatible: no error
    with pytest.raises(
        UserInputError, match="model.image_size: checkpoint 28, config 64; model.g_width: checkpoint 8, config 16"
    ):
        check_resumable(ckpt, hparams | {"g_width": 16, "image_size": 64}, max_epochs=3)
    with pytest.raises(UserInputError, match="has already trained 2 epochs; set trainer.max_epochs above 2"):
        check_resumable(ckpt, hparams, max_epochs=2)
    stderr = user_error(
        run_script(
            "train.py", "experiment=smoke", f"ckpt_path={last}", "dataset.image_size=64", f"hydra.run.dir={tmp_path}"
        )
    )
    assert (
        f"cannot resume from {last}: it was trained with other network settings (model.image_size: checkpoint 28"
        in (stderr)
    )


def test_ckpt_path_missing_truncated_or_a_folder(
    compose_cfg: Callable[..., DictConfig], smoke_run: Path, tmp_path: Path
) -> None:
    def error(ckpt_path: Path) -> str:
        with pytest.raises(UserInputError) as info:
            train(compose_cfg("experiment=smoke", f"ckpt_path={ckpt_path}"))
        return f"error: {info.value}"

    assert f"error: ckpt_path={tmp_path / 'nope.ckpt'} does not exist; give a .ckpt file" in error(
        tmp_path / "nope.ckpt"
    )
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((smoke_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    assert f"error: {truncated} is not a readable checkpoint" in error(truncated)
    assert f"error: ckpt_path={smoke_run} is a folder; give a .ckpt file, or continue that run with resume=" in error(
        smoke_run
    )


def test_a_torch_file_that_is_not_ours(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.ckpt")
    with pytest.raises(UserInputError, match="is not a DCGAN checkpoint written by train.py"):
        read_checkpoint(tmp_path / "other.ckpt")


OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def test_training_without_fid_needs_no_weights(tmp_path: Path, data_dir: Path) -> None:
    env = OFFLINE | {"DCGAN_DATA_DIR": str(data_dir), "TORCH_HOME": str(tmp_path / "torch")}
    run = tmp_path / "run"
    check(
        run_script(
            "train.py",
            "experiment=smoke",
            "eval.fid=false",
            f"hydra.run.dir={run}",
            env=env,
            drop=("DCGAN_FID_WEIGHTS",),
        )
    )
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "checkpoints" / "best.ckpt").exists()
    assert "val/fid" not in events(run).Tags()["scalars"]


def test_fid_without_weights_offline_says_what_to_set(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in (OFFLINE | {"TORCH_HOME": str(tmp_path / "torch")}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DCGAN_FID_WEIGHTS", raising=False)
    with pytest.raises(UserInputError, match="the FID Inception weights could not be downloaded") as info:
        train(compose_cfg("experiment=smoke"))
    assert "DCGAN_FID_WEIGHTS" in str(info.value) and "eval.fid=false" in str(info.value)


@pytest.mark.slow
def test_corrupt_fid_weights(tmp_path: Path) -> None:
    (tmp_path / "w.pth").write_text("garbage")
    stderr = user_error(
        run_script("train.py", "experiment=smoke", f"eval.weights={tmp_path / 'w.pth'}", f"hydra.run.dir={tmp_path}/r")
    )
    assert f"error: FID weights file {tmp_path / 'w.pth'} (sha256 " in stderr
    assert "is not the FID Inception weights: a different, truncated or corrupt file" in stderr
    assert "weights_only" not in stderr  # torch's advice to unpickle an unknown file is not shown


def test_ddp_on_two_cpu_processes(tmp_path: Path, data_dir: Path, fid_weights: Path) -> None:
    """trainer.devices=2, Lightning's way to ask for two devices, on the default trainer (the
    CPU here; trainer=ddp_cpu is tested by the fault and torchrun tests): 2 gloo processes with
    the DDP strategy a GAN needs, one run directory, outputs from rank 0, the same FID and the
    same final weights on both ranks."""
    run = tmp_path / "run"
    result = check(
        run_script(
            "train.py",
            "experiment=smoke",
            "trainer.devices=2",
            f"hydra.run.dir={run}",
            env={"DCGAN_DATA_DIR": str(data_dir)},
        )
    )
    assert "2 processes: strategy ddp_find_unused_parameters_true" in result.stdout + result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # Lightning's re-launched process shares it
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    assert len((run / "fid.jsonl").read_text().splitlines()) == 3  # 2 epochs and the final score, by rank 0
    logs = [(run / "train.log").read_text(), (run / "train_ddp_process_1.log").read_text()]
    fids = [re.findall(rf"Epoch (\d): rank {rank} of 2: FID (\S+)", text) for rank, text in enumerate(logs)]
    assert len(fids[0]) == 2 and fids[0] == fids[1]
    sums = [re.findall(rf"rank {rank} of 2: weight checksum (\S+)", text) for rank, text in enumerate(logs)]
    assert len(sums[0]) == 1 and sums[0] == sums[1]  # gradients were averaged across the ranks
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "completed" and record["batches"] == 10  # 5 per epoch on each rank
    assert (
        read_checkpoint(run / "checkpoints" / "last.ckpt")["loops"]["fit_loop"]["epoch_progress"]["current"][
            "processed"
        ]
        == 2
    )


def test_ddp_in_a_multirun_is_refused(tmp_path: Path, data_dir: Path) -> None:
    check(
        run_script(
            "train.py", "-m", "experiment=smoke", "trainer=ddp_cpu", "eval.fid=false", f"hydra.sweep.dir={tmp_path}",
            env={"DCGAN_DATA_DIR": str(data_dir)},
        )
    )  # fmt: skip
    [job] = [p for p in tmp_path.iterdir() if p.is_dir()]
    record = json.loads((job / "metrics.json").read_text())
    assert record["status"] == "failed"
    assert "a Hydra multirun (-m) cannot train with 2 processes" in record["error"]


def test_torchrun_two_processes_share_one_run_directory(tmp_path: Path, data_dir: Path) -> None:
    """torchrun starts both processes, each running Hydra: they must agree on one run folder
    (the default one, named by the rendezvous id) and on the weights. (FID under two processes:
    test_ddp_on_two_cpu_processes; once the processes exist, the code path is the same.)"""
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"} | {"DCGAN_DATA_DIR": str(data_dir)}
    env = cpu_only(env)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, str(REPO / "train.py"), "experiment=smoke", "trainer=ddp_cpu", "eval.fid=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    check(result)
    [run] = (tmp_path / "outputs" / "smoke").iterdir()
    assert run.name.startswith("torchrun-")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    log = (run / "train.log").read_text()  # both processes append to it
    sums = [re.findall(rf"rank {rank} of 2: weight checksum (\S+)", log) for rank in (0, 1)]
    assert len(sums[0]) == 1 and sums[0] == sums[1]
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
