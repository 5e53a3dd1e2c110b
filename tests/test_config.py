"""Every option of every config group composes and instantiates."""

from __future__ import annotations

import importlib.abc
import os
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from dcgan.callbacks import FIDCallback
from dcgan.datasets import ImageDataModule
from dcgan.errors import UserInputError, entry_point
from dcgan.module import DCGAN
from dcgan.train import build
from tests.helpers import CONF, REPO, write_image_tree


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_hold_the_documented_options() -> None:
    assert options("dataset") == ["fashion_mnist", "folder", "mnist"]
    assert not (CONF / "model").exists()  # the image size is the dataset's: dataset.image_size
    assert options("loss") == ["hinge", "ls", "ns", "wgan_gp"]
    assert options("optimizer") == ["adam", "adam_b128", "adam_b256", "ttur"]
    assert options("trainer") == ["cpu", "ddp", "ddp_cpu", "default", "gpu"]
    assert options("logger") == ["csv", "tensorboard"]
    assert options("experiment") == [
        "fashion128", "fashion128_dcgan", "fashion28", "fashion28_cond", "fashion28_dcgan", "fashion28_fc",
        "fashion64", "fashion64_dcgan", "folder64", "mnist28", "mnist28_best", "mnist28_cond", "mnist28_dcgan",
        "mnist28_fc", "smoke", "sweep_mnist28",
    ]  # fmt: skip
    assert options("hparams_search") == ["optuna_fid"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_image_tree(tmp_path / "imgs")
    return tmp_path / "imgs"


@pytest.mark.parametrize("option", options("dataset"))
def test_dataset_options(compose_cfg: Callable[..., DictConfig], folder: Path, option: str) -> None:
    cfg = compose_cfg(f"dataset={option}", f"dataset.path={folder}" if option == "folder" else "seed=1")
    dm = instantiate(cfg.dataset)
    assert isinstance(dm, ImageDataModule) and dm.name == option
    assert (cfg.model.image_size, cfg.model.channels) == (dm.image_size, dm.channels)  # the model follows


@pytest.mark.parametrize("size", [28, 64, 128])
def test_image_sizes(compose_cfg: Callable[..., DictConfig], size: int) -> None:
    cfg = compose_cfg(f"dataset.image_size={size}", "dataset.channels=3", "model.g_width=4", "model.d_width=4")
    model = instantiate(cfg.model)
    assert isinstance(model, DCGAN)
    assert model.generate(torch.randn(2, cfg.model.latent_dim)).shape == (2, 3, size, size)


@pytest.mark.parametrize("option", options("loss"))
def test_loss_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    _, model, _ = build(compose_cfg(f"loss={option}", "model.g_width=4", "model.d_width=4"))
    assert model.hparams.loss == option
    has_batchnorm = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.discriminator.modules())
    if option == "wgan_gp":  # the paper's critic: no BatchNorm, penalty 10, 5 critic steps per G step
        assert (model.hparams.gp_weight, model.hparams.d_steps_per_g, has_batchnorm) == (10.0, 5, False)
    else:
        assert (model.hparams.gp_weight, model.hparams.d_steps_per_g, has_batchnorm) == (0.0, 1, True)


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    # on the default recipe, whose own choice (adam_b256) the command line's replaces
    cfg = compose_cfg(f"optimizer={option}")
    param = torch.nn.Parameter(torch.zeros(1))
    g = instantiate(cfg.optimizer.generator)([param])
    d = instantiate(cfg.optimizer.discriminator)([param])
    assert isinstance(g, torch.optim.Adam) and isinstance(d, torch.optim.Adam)
    rates = {"adam": (2e-4, 2e-4), "adam_b128": (2.8e-4, 2.8e-4), "adam_b256": (4e-4, 4e-4), "ttur": (1e-4, 4e-4)}
    expected = rates[option]
    assert (g.defaults["lr"], d.defaults["lr"]) == expected
    assert tuple(g.defaults["betas"]) == (0.5, 0.999)


def test_optimizer_sweep_keys_reach_both_networks(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("optimizer.lr_g=3e-4", "optimizer.lr_d=1e-4", "optimizer.beta1=0.0")
    assert cfg.optimizer.generator.lr == 3e-4 and cfg.optimizer.discriminator.lr == 1e-4
    assert list(cfg.optimizer.discriminator.betas) == [0.0, 0.999]


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    cfg = compose_cfg(f"trainer={option}")
    if option.startswith("ddp"):
        assert cfg.trainer.strategy == "ddp_find_unused_parameters_true" and cfg.trainer.devices == 2
    if option in ("gpu", "ddp"):
        assert cfg.trainer.accelerator == "gpu"
    if cfg.trainer.accelerator == "gpu" and torch.cuda.device_count() < cfg.trainer.devices:
        return  # e.g. trainer=ddp (2 GPUs) on a machine with fewer: composed, not built
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, L.Trainer)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(compose_cfg: Callable[..., DictConfig], option: str, tmp_path: Path) -> None:
    cfg = compose_cfg(f"logger={option}")
    logger = instantiate(cfg.logger)
    assert isinstance(logger, Logger)
    assert Path(logger.log_dir) == tmp_path / "run" / option


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_options_build_everything(
    compose_cfg: Callable[..., DictConfig], folder: Path, option: str, fid_weights: Path
) -> None:
    extra = [f"dataset.path={folder}"] if option == "folder64" else []
    cfg = compose_cfg(f"experiment={option}", *extra)
    datamodule, model, trainer = build(cfg)
    assert any(isinstance(c, FIDCallback) for c in trainer.callbacks)  # type: ignore[attr-defined]
    assert isinstance(datamodule, ImageDataModule) and isinstance(model, DCGAN) and isinstance(trainer, L.Trainer)
    assert model.hparams.image_size == datamodule.image_size


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "size", "channels", "width"),
    [("fashion64", 64, 1, 32), ("fashion128", 128, 1, 8), ("folder64", 64, 3, 16)],
)
def test_size_recipes_train_a_few_batches_at_their_size(
    compose_cfg: Callable[..., DictConfig], folder: Path, option: str, size: int, channels: int, width: int
) -> None:
    """The recipes beyond 28 px build networks derived for their size (widths chosen per size,
    docs/performance.md) and train on images of that size (a folder's in RGB, with
    DiffAugment)."""
    quick = ["eval.fid=false", "eval.classifier=false", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    data = [f"dataset.path={folder}", "dataset.batch_size=4"] if option == "folder64" else ["dataset.batch_size=8"]
    cfg = compose_cfg(f"experiment={option}", "trainer.precision=bf16-mixed", *data, *quick)
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule)
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 2
    assert datamodule.image_size == size and datamodule.images is not None
    assert tuple(datamodule.images.shape[1:]) == (channels, size, size)
    last = [m for m in model.generator.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    first = next(m for m in model.discriminator.modules() if isinstance(m, torch.nn.Conv2d))
    assert (last.in_channels, first.out_channels) == (width, width)
    # resize upsampling (no ConvTranspose checkerboard) and spectral norm in D with the hinge loss
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.generator.modules())
    assert (model.hparams.d_norm, model.hparams.loss) == ("spectral", "hinge")
    assert bool(model.hparams.augment) == (option == "folder64")  # DiffAugment for a small folder
    assert model.generate(torch.randn(2, model.hparams.latent_dim)).shape == (2, channels, size, size)


def test_default_experiment_is_mnist28(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg()
    assert cfg.dataset.name == "mnist" and cfg.model.image_size == 28
    # command-line group choices win over the experiment's
    cfg = compose_cfg("experiment=smoke", "dataset=fashion_mnist", "dataset.image_size=64")
    assert cfg.dataset.name == "fashion_mnist" and cfg.model.image_size == 64 and cfg.model.g_width == 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr_g=-0.1", "optimizer.generator.lr=-0.1 must be > 0"),
        ("optimizer.beta1=1.5", "optimizer.generator: Invalid beta parameter at index 0: 1.5"),
        ("model.latent_dim=0", "model.latent_dim=0 must be an integer >= 1"),
        ("dataset.batch_size=-1", "dataset.batch_size=-1 must be an integer >= 1"),
        (
            "dataset.in_memory=false",
            r"dataset.in_memory=false streams image folders only; mnist is always held in memory \(60,000 images "
            r"of 1x28x28 take 45 MB as uint8\)",
        ),
        ("model.real_label=2", r"model.real_label=2 must be in \[0, 1\]"),
        ("model.fake_label=-0.1", r"model.fake_label=-0.1 must be in \[0, 1\]"),
        ("optimizer.lr_d=0", "optimizer.discriminator.lr=0 must be > 0"),
        (
            "dataset.image_size=32",
            "dataset.image_size=32 is not supported; supported sizes are 28, 64, 128$",
        ),
        ("model.nonfinite_loss=ignore", "model.nonfinite_loss='ignore' is not known; choose one of stop, skip"),
        ("model.d_norm=layer", "model.d_norm='layer' is not known; choose one of batch, spectral, none"),
        ("loss=hinge model.real_label=0.9", "label smoothing applies to the ns and ls losses, and hinge has no labels"),
        ("callbacks.checkpoint.every_n_epochs=0", "callbacks.checkpoint.every_n_epochs=0 must be an integer >= 1"),
        ("speed.compile_mode=fast", "speed.compile_mode='fast' is not known; choose one of default, reduce-overhead"),
        ("speed.fused_optimizer=maybe", "speed.fused_optimizer='maybe' must be true, false or auto"),
        ("speed.channels_last=1", "speed.channels_last=1 must be true or false"),
        ("trainer.precision=bf17", "trainer: Precision 'bf17' is invalid. Allowed precision values"),
        ("seed=abc", r"seed='abc' must be an integer in \[0, 4294967295\], or null for a random seed"),
        ("seed=-1", r"seed=-1 must be an integer in \[0, 4294967295\]"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be an integer >= 1: the number of epochs to train"),
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1 must be an integer >= 1"),
        ("model.fc_width=-8", "model.fc_width=-8 must be an integer >= 0"),
        (
            "eval.num_samples=3",
            r"eval.num_samples=3 must be auto or an integer >= 4 \(precision and recall take 3 neighbours",
        ),
        (
            "trainer.devices=2 trainer.strategy=ddp",
            "trainer.strategy=ddp cannot train a GAN: .* Use trainer.strategy=ddp_find_unused_parameters_true",
        ),
        ("trainer.devices=2 trainer.strategy=ddp_spawn", "Use trainer.strategy=ddp_spawn_find_unused_parameters_true"),
    ],
)
def test_bad_values_fail_before_any_work(compose_cfg: Callable[..., DictConfig], override: str, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        build(compose_cfg(*override.split()))


def test_several_devices_get_the_ddp_strategy_a_gan_needs(compose_cfg: Callable[..., DictConfig]) -> None:
    """trainer.devices=2 on the default strategy (auto): Lightning alone would pick plain DDP,
    whose first batch fails on the parameters one of the GAN's two updates leaves unused."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    _, _, trainer = build(compose_cfg("experiment=smoke", "trainer.devices=2"))
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 2
    assert trainer.strategy._ddp_kwargs == {"find_unused_parameters": True}
    _, _, trainer = build(compose_cfg("experiment=smoke"))
    assert isinstance(trainer.strategy, SingleDeviceStrategy)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])  # what trainer.precision=auto picks from
def test_train_with_the_same_seed_gives_the_same_losses(compose_cfg: Callable[..., DictConfig], precision: str) -> None:
    from dcgan.train import train

    def losses(seed: int, run: str) -> dict[str, float]:
        record = train(
            compose_cfg(
                "experiment=smoke",
                "logger=csv",
                f"seed={seed}",
                "eval.fid=false",
                f"trainer.precision={precision}",
                "+trainer.enable_progress_bar=false",
                run=run,
            )
        )
        return {k: v for k, v in record["metrics"].items() if k.startswith("train/")}

    first = losses(7, "a")
    assert set(first) == {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"}
    assert losses(7, "b") == first
    assert losses(8, "c") != first


def test_fid_evaluation_does_not_change_training(compose_cfg: Callable[..., DictConfig], fid_weights: Path) -> None:
    """Evaluating FID (and KID) between epochs leaves the training run's random numbers alone."""
    from dcgan.train import train

    def losses(run: str, *fid: str) -> dict[str, float]:
        cfg = compose_cfg(
            "experiment=smoke", "logger=csv", "seed=3", *fid, "+trainer.enable_progress_bar=false", run=run
        )
        return {k: v for k, v in train(cfg)["metrics"].items() if k.startswith("train/")}

    without = losses("a", "eval.fid=false")
    assert set(without) == {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"}
    assert losses("b", "eval.fid=true", "eval.kid=true") == without


def test_ctrl_c_while_an_entry_script_imports_ends_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while train.py imports torch and the project (before any run exists): exit 130
    and one line, not a KeyboardInterrupt traceback."""

    class CtrlC(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *args: object) -> None:
            if name == "dcgan.train":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "dcgan.train", raising=False)
    monkeypatch.setattr(sys, "meta_path", [CtrlC(), *sys.meta_path])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    assert info.value.code == 130
    assert capsys.readouterr().err == "interrupted: Ctrl-C before training began; nothing to save\n"


def test_entry_point_exit_codes(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A config error becomes one line and exit 2 (Hydra raises it: entry_point sets
    HYDRA_FULL_ERROR meanwhile); a bug keeps its traceback; a run's own exit code passes."""
    from hydra.errors import MissingConfigException

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    missing = MissingConfigException("Could not find 'dataset/cifar10'", "dataset/cifar10", ["mnist", "folder"])
    with pytest.raises(SystemExit) as info, entry_point():
        assert os.environ["HYDRA_FULL_ERROR"] == "1"
        raise missing
    assert info.value.code == 2 and "HYDRA_FULL_ERROR" not in os.environ
    assert (
        capsys.readouterr().err == "error: dataset=cifar10 is not an option of dataset; choose one of mnist, folder\n"
    )
    with pytest.raises(RuntimeError, match="bug"), entry_point():
        raise RuntimeError("bug")
    with pytest.raises(SystemExit) as info, entry_point():
        sys.exit(143)
    assert info.value.code == 143
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the user's: Hydra's own report, whole
    with pytest.raises(MissingConfigException), entry_point():
        raise missing
    assert os.environ["HYDRA_FULL_ERROR"] == "1" and capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("script", "override", "message"),
    [
        # a mistyped key: the nearest settings, and no advice to add it with +
        (
            "train.py",
            "eval.num_sample=500",
            "eval.num_sample is not a setting (did you mean eval.num_samples?); `python train.py --cfg job` lists them",
        ),
        ("train.py", "evl.num_samples=5", "evl.num_samples is not a setting (did you mean eval.num_samples?)"),
        ("train.py", "model.ema.decay=0.9", "model.ema.decay is not a setting (did you mean model.ema_decay?)"),
        ("train.py", "trainer.devicess=2", "trainer.devicess is not a setting (did you mean trainer.devices?)"),
        ("generate.py", "fid.num_sample=5", "fid.num_sample is not a setting (did you mean fid.num_samples?)"),
        # a constructor's argument that the config does not list: add it with +
        (
            "train.py",
            "trainer.enable_progress_bar=false",
            "trainer.enable_progress_bar is not in the config, but "
            "lightning.Trainer takes enable_progress_bar: add it with +trainer.enable_progress_bar=false",
        ),
        (
            "train.py",
            "experiment=mnist29",
            "experiment=mnist29 is not an option of experiment; choose one of fashion128, fashion128_dcgan, fashion28,",
        ),
        (
            "train.py",
            "eval.fid=[",
            "cannot read 'eval.fid=[': no viable alternative at input '['; settings are key=value",
        ),
    ],
)
def test_a_config_hydra_cannot_compose_gets_one_line(
    script: str, override: str, message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [script, override])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / script), run_name="__main__")
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    if "not a setting" in message:
        assert "+" not in err  # no advice to add a key that nothing takes


@pytest.mark.parametrize(
    ("override", "refused"),
    [
        ("+foo=bar", True),
        ("+eval.num_sample=500", True),  # a typo of eval.num_samples
        ("+model.ema.decay=0.9", True),  # under a node that does not exist
        ("+model.g_widht=64", True),  # a constructor's node, but not an argument it takes
        ("+trainer.devicess=2", True),
        ("+trainer.enable_progress_bar=false", False),  # a Lightning Trainer argument
        ("+callbacks.extra._target_=lightning.pytorch.callbacks.Timer", False),  # a callback of one's own
        ("eval.num_samples=500", False),
    ],
)
def test_plus_adds_only_constructor_arguments(override: str, refused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from dcgan.cli import check_added_settings

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[override], return_hydra_config=True)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
    HydraConfig.instance().set_config(cfg)
    if not refused:
        check_added_settings(cfg)
        return
    key = override[1:].split("=")[0]
    with pytest.raises(UserInputError, match=rf"^\{override}: {key} is not a setting \((mistyped|did you mean)"):
        check_added_settings(cfg)


def test_a_section_replaced_by_a_value_is_refused(compose_cfg: Callable[..., DictConfig]) -> None:
    """model=dcgan (a config group in other templates) replaces the whole section with a word."""
    from dcgan.train import train

    with pytest.raises(UserInputError, match="^model=dcgan: model is a section of settings, not one setting or a"):
        train(compose_cfg("model=dcgan"))


def test_the_readme_results_commands_train_what_their_rows_report() -> None:
    """Each command of the README's results table, run as written, trains the epochs its row
    gives and keeps the checkpoint whose FID the row reports, which `generate.py mode=fid
    checkpoint=<run dir>` then scores: best.ckpt with in-training FID, else last.ckpt."""
    from hydra import compose, initialize_config_dir

    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("| ") and ("`make train`" in line or "`python train.py" in line)
    ]
    assert len(rows) >= 7
    for _, cell, epochs, _, fid, *_ in rows:
        command = cell.split("`")[1]  # the cell's first code span; a remark may follow it
        overrides = [] if command == "make train" else command.removeprefix("python train.py ").split()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        assert cfg.trainer.max_epochs == int(epochs), command
        assert ("(best.ckpt)" in fid, "(last.ckpt)" in fid) == (cfg.eval.fid, not cfg.eval.fid), command
