from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from dcgan.datasets.module import TensorLoader
from dcgan.errors import UserInputError
from dcgan.module import DCGAN, EMA

TINY = {
    "image_size": 28,
    "channels": 1,
    "latent_dim": 8,
    "g_width": 4,
    "d_width": 4,
    "max_width": 16,
    "g_stem": "conv",
    "g_upsample": "transpose",
    "fc_width": 0,
    "d_dropout": 0.0,
    "d_minibatch_std": 0,
    "skips": False,
    "start_grid": None,
    "d_norm": "batch",
    "g_spectral": False,
    "conditional": False,
    "num_classes": None,
    "loss": "ns",
    "gp_weight": 0.0,
    "r1_weight": 0.0,
    "r1_every": 1,
    "augment": [],
    "d_steps_per_g": 1,
    "real_label": 1.0,
    "fake_label": 0.0,
    "instance_noise": 0.0,
    "instance_noise_anneal_steps": None,
    "num_fixed_samples": 4,
    "nonfinite_loss": "stop",
    "ema_decay": 0.0,
    "ema_start": 0,
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


@pytest.mark.parametrize(
    "settings",
    [
        {"loss": "hinge", "d_norm": "spectral"},
        {"loss": "hinge", "d_norm": "spectral", "d_minibatch_std": 4},
        {"loss": "ls", "real_label": 0.9},
        {"loss": "wgan_gp", "gp_weight": 10.0, "d_norm": "none", "d_steps_per_g": 2},
    ],
)
def test_each_loss_trains_both_networks(settings: dict) -> None:
    torch.manual_seed(0)
    model = tiny_model(**settings)
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    g_before = [p.detach().clone() for p in model.generator.parameters()]
    logged = fit(model, batches=4).logged_metrics
    assert torch.isfinite(logged["train/d_loss"]) and torch.isfinite(logged["train/g_loss"])
    assert all(not torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters(), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters(), strict=True))


def test_the_gradient_penalty_is_part_of_ds_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    import dcgan.module

    penalties: list[float] = []
    real_penalty = dcgan.module.gradient_penalty

    def penalty(*args):  # type: ignore[no-untyped-def]
        value = real_penalty(*args)
        penalties.append(value.item())
        return value

    monkeypatch.setattr(dcgan.module, "gradient_penalty", penalty)
    fit(tiny_model(loss="wgan_gp", gp_weight=10.0, d_norm="none"), batches=3)
    assert len(penalties) == 3 and all(p > 0 for p in penalties)
    fit(tiny_model(loss="hinge", d_norm="none"), batches=2)
    assert len(penalties) == 3  # gp_weight 0: no penalty


@pytest.mark.parametrize(("d_steps", "batches", "g_steps"), [(1, 6, 6), (3, 6, 2), (2, 5, 2)])
def test_d_steps_per_g_is_honoured(d_steps: int, batches: int, g_steps: int) -> None:
    trainer = fit(tiny_model(d_steps_per_g=d_steps), batches=batches)
    assert optimizer_steps(trainer) == [g_steps, batches]  # [G, D]


def test_losses_are_logged() -> None:
    trainer = fit(tiny_model(instance_noise=0.1), batches=2)
    logged = set(trainer.callback_metrics)
    assert {"train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "train/instance_noise"} <= logged


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
    model = tiny_model(g_stem="dense", fc_width=16)
    trainer = fit(model, batches=2, tmp_path=tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = DCGAN.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.g_stem == "dense" and loaded.generator.fc is not None
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
        ({"loss": "wgan"}, "model.loss='wgan' is not known; choose one of ns, hinge, ls, wgan_gp"),
        ({"loss": "hinge", "real_label": 0.9}, "label smoothing applies to the ns and ls losses, and hinge has no"),
        ({"loss": "wgan_gp", "d_norm": "none"}, "model.gp_weight=0.0 must be > 0 with loss=wgan_gp"),
        ({"gp_weight": 10.0}, "model.gp_weight=10.0 needs model.d_norm=none or spectral"),
        ({"gp_weight": -1.0, "d_norm": "none"}, "model.gp_weight=-1.0 must be >= 0"),
        ({"ema_decay": 1.0}, r"model.ema_decay=1.0 must be in \[0, 1\) \(0: no EMA\)"),
        ({"ema_start": -1}, "model.ema_start=-1 must be an integer >= 0"),
        ({"r1_weight": 1.0}, "model.r1_weight=1.0 needs model.d_norm=none or spectral"),
        ({"r1_weight": -1.0, "d_norm": "spectral"}, "model.r1_weight=-1.0 must be >= 0"),
        ({"r1_every": 0}, "model.r1_every=0 must be an integer >= 1"),
        ({"augment": ["flip"]}, r"model.augment=\['flip'\]: use a list of color, translation, cutout"),
        ({"augment": "translation"}, r"model.augment='translation': use a list of"),
        ({"conditional": True, "num_classes": 1}, "model.num_classes=1 must be an integer >= 2"),
        ({"conditional": "yes"}, "model.conditional='yes' must be true or false"),
    ],
)
def test_bad_settings_are_refused(override: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        tiny_model(**override)


def test_ema_after_k_updates_equals_the_closed_form() -> None:
    """ema_k = d^k w_0 + (1 - d) * sum_i d^(k - i) w_i for the weights w_1..w_k after each update,
    from the first update at or after ``start``; before it the average copies the weights."""
    net = torch.nn.BatchNorm1d(1)  # a parameter (weight) and buffers (running statistics)
    ema = EMA(net, decay=0.9, start=2)
    values = [3.0, 5.0, 1.0, 4.0, 2.0]
    for step, value in enumerate(values):
        net.weight.data.fill_(value)
        net.running_mean.fill_(10 * value)
        ema.update(net, step)
        if step < 2:
            assert ema.net.weight.item() == pytest.approx(value)  # copies before start
    expected = values[1]
    for value in values[2:]:
        expected = 0.9 * expected + 0.1 * value
    assert ema.net.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.net.running_mean.item() == 10 * values[-1]  # buffers are copied
    assert not any(p.requires_grad for p in ema.net.parameters())


def test_ema_does_not_change_training() -> None:
    """The average is kept beside G, never fed back: G and D after training with EMA equal a
    run without it, so an EMA run's own G scores the run without EMA (docs/quality.md)."""
    runs = []
    for decay in (0.0, 0.5):
        torch.manual_seed(0)
        model = tiny_model(ema_decay=decay)
        fit(model, batches=3)
        runs.append([p.detach() for p in (*model.generator.parameters(), *model.discriminator.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_the_ema_generator_draws_grids_and_is_saved(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model(ema_decay=0.5)
    assert model.generator_ema is not None
    trainer = fit(model, batches=3, tmp_path=tmp_path)
    z = model.fixed_noise
    averaged, raw = model.generate(z), model.generate(z, ema=False)
    assert not torch.equal(averaged, raw)
    model.generator.eval()
    with torch.no_grad():
        assert torch.equal(raw, model.generator(z))  # ema=False is G itself
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    loaded = DCGAN.load_from_checkpoint(tmp_path / "ema.ckpt", weights_only=True)
    assert torch.equal(loaded.generate(z), averaged) and torch.equal(loaded.generate(z, ema=False), raw)
    # the average follows G's updates: with a decay near 0 it is G
    follower = tiny_model(ema_decay=1e-6)
    fit(follower, batches=2)
    assert follower.generator_ema is not None
    pairs = zip(follower.generator_ema.net.state_dict().values(), follower.generator.state_dict().values(), strict=True)
    assert all(torch.allclose(a.float(), b.float(), atol=1e-5) for a, b in pairs)
    # without an average, ema=True draws with G
    plain = tiny_model()
    assert plain.generator_ema is None and torch.equal(plain.generate(z), plain.generate(z, ema=False))
