from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from dcgan.datasets.module import TensorLoader
from dcgan.errors import UserInputError
from dcgan.module import DCGAN

TINY = {
    "image_size": 28,
    "channels": 1,
    "latent_dim": 8,
    "g_width": 4,
    "d_width": 4,
    "max_width": 16,
    "g_stem": "conv",
    "d_dropout": 0.0,
    "d_steps_per_g": 1,
    "real_label": 1.0,
    "fake_label": 0.0,
    "instance_noise": 0.0,
    "instance_noise_anneal_steps": None,
    "num_fixed_samples": 4,
    "nonfinite_loss": "stop",
}


def tiny_model(**overrides) -> DCGAN:  # type: ignore[no-untyped-def]
    adam = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
    return DCGAN(**(TINY | overrides), g_optimizer=adam, d_optimizer=adam)


def fit(model: DCGAN, batches: int, tmp_path: Path | None = None, **trainer_kwargs) -> L.Trainer:  # type: ignore[no-untyped-def]
    images = torch.rand(batches * 4, 1, 28, 28) * 2 - 1
    labels = torch.zeros(batches * 4, dtype=torch.long)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=tmp_path is not None,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(model, train_dataloaders=TensorLoader((images, labels), batch_size=4, seed=0))
    return trainer


def optimizer_steps(trainer: L.Trainer) -> list[int]:
    return [int(next(iter(opt.state.values()))["step"]) for opt in trainer.optimizers]


def test_one_step_changes_both_networks() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    g_before = [p.detach().clone() for p in model.generator.parameters()]
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    trainer = fit(model, batches=1)
    assert optimizer_steps(trainer) == [1, 1]
    assert all(not torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters(), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters(), strict=True))
    # untoggle_optimizer restored requires_grad everywhere
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("d_steps", "batches", "g_steps"), [(1, 6, 6), (3, 6, 2), (2, 5, 2)])
def test_d_steps_per_g_is_honoured(d_steps: int, batches: int, g_steps: int) -> None:
    trainer = fit(tiny_model(d_steps_per_g=d_steps), batches=batches)
    assert optimizer_steps(trainer) == [g_steps, batches]  # [G, D]


def test_losses_are_logged() -> None:
    trainer = fit(tiny_model(instance_noise=0.1), batches=2)
    logged = set(trainer.callback_metrics)
    assert {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "train/instance_noise"} <= logged
    assert 0 < float(trainer.callback_metrics["train/d_real"]) < 1


def test_instance_noise_anneals_over_the_run_by_default() -> None:
    model = tiny_model(instance_noise=0.2)
    fit(model, batches=4)
    # anneal_steps=None: the whole run (4 batches), so step 2 is half-way
    assert model.current_instance_noise(0) == pytest.approx(0.2)
    assert model.current_instance_noise(2) == pytest.approx(0.1)
    assert model.current_instance_noise(4) == 0.0
    fixed = tiny_model(instance_noise=0.2, instance_noise_anneal_steps=10)
    assert fixed.current_instance_noise(5) == pytest.approx(0.1)


def test_same_seed_same_losses() -> None:
    def run() -> dict[str, float]:
        L.seed_everything(123, verbose=False)
        trainer = fit(tiny_model(), batches=3)
        return {k: float(v) for k, v in trainer.callback_metrics.items()}

    first, second = run(), run()
    assert first == second
    L.seed_everything(124, verbose=False)
    other = {k: float(v) for k, v in fit(tiny_model(), batches=3).callback_metrics.items()}
    assert other != first


def test_generate_uses_eval_mode_and_restores_it() -> None:
    model = tiny_model()
    model.train()
    running_mean = model.generator.stem[1].running_mean.clone()
    z = torch.randn(5, 8)
    a, b = model.generate(z), model.generate(z)
    assert torch.equal(a, b)  # eval mode: no batch statistics, no dropout
    assert torch.equal(model.generator.stem[1].running_mean, running_mean)  # BN stats untouched
    assert model.generator.training
    assert a.shape == (5, 1, 28, 28)
    # batched generation equals one big batch
    assert torch.allclose(model.generate(z, batch_size=2), a, atol=1e-6)


def test_checkpoint_rebuilds_the_generator_alone(tmp_path: Path) -> None:
    model = tiny_model(g_stem="dense")
    trainer = fit(model, batches=2, tmp_path=tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = DCGAN.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.g_stem == "dense"
    assert torch.equal(loaded.fixed_noise, model.fixed_noise)
    assert torch.equal(loaded.generate(loaded.fixed_noise), model.generate(model.fixed_noise))
    with pytest.raises(RuntimeError, match="without optimizer factories"):
        loaded.configure_optimizers()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"real_label": 1.5}, r"model.real_label=1.5 must be in \[0, 1\]"),
        ({"fake_label": -0.1}, r"model.fake_label=-0.1 must be in \[0, 1\]"),
        ({"d_steps_per_g": 0}, "model.d_steps_per_g=0 must be an integer >= 1"),
        ({"instance_noise": -1.0}, "model.instance_noise=-1.0 must be >= 0"),
        ({"image_size": 32}, "supported sizes are 28, 64, 128"),
    ],
)
def test_bad_settings_are_refused(override: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        tiny_model(**override)
