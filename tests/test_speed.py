"""The speed switches (conf `speed`, dcgan/speed.py; trainer.precision): each changes how the
networks run, and none changes what a checkpoint holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import DictConfig

from dcgan.errors import UserInputError
from dcgan.module import DCGAN
from dcgan.sampling import load_generator_module
from dcgan.speed import Speed
from dcgan.train import build, train

QUIET = ("logger=csv", "eval.fid=false", "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false")


def fit(compose_cfg: Callable[..., DictConfig], *overrides: str, run: str) -> tuple[DCGAN, L.Trainer]:
    """Three batches of the smoke experiment, as train.py builds it."""
    cfg = compose_cfg(
        "experiment=smoke", *QUIET, "trainer.max_epochs=1", "trainer.limit_train_batches=3", *overrides, run=run
    )
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    return model, trainer


def conv_weights(model: DCGAN) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() == 4]


def test_channels_last_changes_the_layout_not_the_training(compose_cfg: Callable[..., DictConfig]) -> None:
    nhwc, _ = fit(compose_cfg, "speed.channels_last=true", run="nhwc")
    nchw, _ = fit(compose_cfg, "speed.channels_last=false", run="nchw")
    # (a weight with one input channel, or 1x1 kernels, is laid out alike either way)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(nhwc))
    assert sum(not w.is_contiguous() for w in conv_weights(nhwc)) >= 3
    assert all(w.is_contiguous() for w in conv_weights(nchw))
    # Same seed, same batches: the weights after 3 Adam steps differ by float rounding only,
    # 5.2e-6 at most (measured; Adam's normalisation magnifies rounding where gradients are
    # tiny), well below one Adam step (~lr = 2e-4), so a missing or extra step fails.
    for (name, a), b in zip(nhwc.state_dict().items(), nchw.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=0, atol=2e-5), name


@pytest.mark.parametrize(("setting", "fused"), [("true", True), ("false", False), ("auto", False)])
def test_fused_optimizer(compose_cfg: Callable[..., DictConfig], setting: str, fused: bool) -> None:
    _, trainer = fit(compose_cfg, f"speed.fused_optimizer={setting}", run=setting)
    assert [bool(opt.defaults["fused"]) for opt in trainer.optimizers] == [fused, fused]


def test_fused_auto_means_on_a_gpu_and_needs_an_optimizer_that_has_it(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    auto = Speed(channels_last=True, fused_optimizer="auto", compile=False, compile_mode="default")
    assert auto.fused_on(torch.device("cuda")) and not auto.fused_on(torch.device("cpu"))
    adamax = ("optimizer.generator._target_=torch.optim.Adamax",)
    with pytest.raises(UserInputError, match=r"optimizer.generator \(Adamax\) has no fused kernel"):
        build(compose_cfg("experiment=smoke", "speed.fused_optimizer=true", *adamax))
    build(compose_cfg("experiment=smoke", "speed.fused_optimizer=auto", *adamax))  # auto: torch's default


@pytest.mark.slow
def test_compiled_training_writes_checkpoints_that_load_without_compile(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = compose_cfg(
        "experiment=smoke", *QUIET, "speed.compile=true", "trainer.max_epochs=1", "trainer.limit_train_batches=2"
    )
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    record = train(cfg)
    assert record["status"] == "completed" and record["batches"] == 2
    # G and D were compiled: training (D with and without weight gradients) and sampling
    assert counters["stats"]["unique_graphs"] - graphs >= 3
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    keys = set(ckpt["state_dict"])
    assert not any("_orig_mod" in k for k in keys)
    assert keys == set(DCGAN(**ckpt["hyper_parameters"]).state_dict())
    model = load_generator_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    images = model.generate(torch.randn(4, model.hparams.latent_dim))
    assert images.shape == (4, 1, 28, 28) and torch.isfinite(images).all()
    assert (tmp_path / "run" / "samples").is_dir() and any((tmp_path / "run" / "samples").iterdir())


def test_bf16_mixed_runs_the_step_in_bfloat16_and_keeps_float32_weights(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    def run(precision: str) -> tuple[DCGAN, dict[str, float]]:
        model, trainer = fit(compose_cfg, f"trainer.precision={precision}", run=precision)
        return model, {k: float(v) for k, v in trainer.callback_metrics.items()}

    bf16_model, bf16 = run("bf16-mixed")
    _, fp32 = run("32-true")

    def representable(x: float) -> bool:
        return float(torch.tensor(x).bfloat16().float()) == x

    # D's outputs came out of bfloat16 layers under autocast, and only then
    assert representable(bf16["train/d_real"]) and representable(bf16["train/d_fake"])
    assert not (representable(fp32["train/d_real"]) and representable(fp32["train/d_fake"]))
    # the losses are computed in float32 (BCE-with-logits is on autocast's float32 list)
    assert all(torch.isfinite(torch.tensor(v)) for v in bf16.values())
    assert {p.dtype for p in bf16_model.parameters()} == {torch.float32}


def test_step_metrics_are_logged_only_when_written_and_at_epoch_ends(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    logged: list[int] = []
    real_log_step = DCGAN._log_step

    def spy(self: DCGAN, *args: object) -> None:
        logged.append(self.trainer.fit_loop.total_batch_idx + 1)
        real_log_step(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(DCGAN, "_log_step", spy)
    cfg = compose_cfg("experiment=smoke", *QUIET, "trainer.log_every_n_steps=3")  # 2 epochs of 5 batches
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    assert logged == [3, 5, 6, 9, 10]  # every 3rd batch of the run, and each epoch's last
    # the values of the run's last batch, as plain floats
    metrics = trainer.callback_metrics
    assert set(metrics) >= {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"}
    assert 0 < float(metrics["train/d_real"]) < 1 and float(metrics["train/d_loss"]) > 0


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "32-true")],
)
def test_auto_precision_takes_bfloat16_where_the_cpu_has_it(
    compose_cfg: Callable[..., DictConfig],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    avx512_bf16: bool,
    amx: bool,
    expected: str,
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cfg = compose_cfg("experiment=smoke", *QUIET, "trainer.precision=auto")
    with caplog.at_level("INFO", logger="dcgan.train"):
        _, _, trainer = build(cfg)
    assert str(trainer.precision) == expected and cfg.trainer.precision == expected  # hparams log the choice
    [line] = [r.getMessage() for r in caplog.records if "trainer.precision=auto" in r.getMessage()]
    reason = "bfloat16 runs natively" if expected == "bf16-mixed" else "neither AVX512-BF16 nor AMX"
    assert line.startswith(f"trainer.precision=auto: {expected}, as this CPU has") and reason in line
    # a precision given is taken as it is, whatever the hardware
    for forced in ("32-true", "bf16-mixed"):
        _, _, trainer = build(compose_cfg("experiment=smoke", *QUIET, f"trainer.precision={forced}"))
        assert str(trainer.precision) == forced


def test_auto_precision_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from dcgan.speed import auto_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "GPU X")
    for capability, expected in (((8, 0), "bf16-mixed"), ((7, 5), "32-true")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, c=capability: c)
        assert auto_precision("auto")[0] == expected and auto_precision("gpu")[0] == expected
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert auto_precision("cpu")[0] == "32-true"  # trainer=cpu asks the CPU, not the GPU
