"""The GAN variants beyond the losses: R1, DiffAugment, G's spectral norm, the learning-rate
schedule, class-conditional G and D (networks, training, checkpoints, generate.py)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dcgan.augment import DiffAugment, cutout, translation
from dcgan.datasets.module import TensorLoader
from dcgan.errors import UserInputError
from dcgan.losses import r1_penalty
from dcgan.module import linear_decay
from dcgan.networks import ConditionalBatchNorm, Discriminator, Generator
from dcgan.sampling import class_labels
from tests.helpers import check, run_script, write_image_tree
from tests.test_generate import cells, compose_generate, read
from tests.test_module import fit, optimizer_steps, tiny_model

# -- R1 ---------------------------------------------------------------------------------------


def test_r1_on_a_known_function() -> None:
    # D(x) = <w, x> has the gradient w at every x: R1 = |w|^2 / 2 = (1 + 4 + 4) / 2.
    w = torch.tensor([1.0, -2.0, 2.0]).view(1, 3, 1, 1)
    x = torch.randn(5, 3, 1, 1, requires_grad=True)
    logits = (w * x).sum(dim=(1, 2, 3))
    assert r1_penalty(logits, x).item() == pytest.approx(4.5)
    # and it is differentiable in D's weights: d/dw |w|^2 / 2 = w
    w.requires_grad_(True)
    r1_penalty((w * x).sum(dim=(1, 2, 3)), x).backward()
    assert torch.allclose(w.grad, w.detach())  # type: ignore[arg-type]


def test_r1_is_taken_every_r1_every_batches_with_a_scaled_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    import dcgan.module

    weights: list[float] = []
    real = dcgan.module.r1_penalty

    def penalty(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        value = real(logits, x)
        weights.append(value.item())
        return value

    monkeypatch.setattr(dcgan.module, "r1_penalty", penalty)
    fit(tiny_model(d_norm="spectral", r1_weight=1.0, r1_every=2), batches=5)
    assert len(weights) == 3 and all(w > 0 for w in weights)  # batches 0, 2, 4


# -- DiffAugment --------------------------------------------------------------------------------


def test_diffaugment_keeps_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    augment = DiffAugment(["color", "translation", "cutout"])
    x = torch.rand(6, 3, 28, 28, requires_grad=True)
    y = augment(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not DiffAugment([]).transforms and torch.equal(DiffAugment([])(x), x)


def test_translation_shifts_and_cutout_blanks_a_square() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 1, 16, 16)
    # Shifted by up to 2 px with zero padding: each image keeps a 14x14 or larger block of ones.
    moved = translation(x)
    ones = moved.sum(dim=(1, 2, 3))
    assert (ones >= 14 * 14).all() and (ones < 256).any()
    # Cutout zeroes a square of half the side (clipped at the border): 64 pixels or fewer.
    cut = cutout(x)
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert (zeros > 0).all() and (zeros <= 64).all() and (zeros == 64).any()


def test_translation_moves_each_image_by_its_own_shift() -> None:
    """Each image is its own shift of the input, zeros where it reads past the edge: compared
    with the shift done by slicing, for the (dy, dx) the transform draws."""
    x = torch.rand(32, 3, 16, 12)
    torch.manual_seed(1)
    moved = translation(x)
    torch.manual_seed(1)
    dy = torch.randint(-2, 3, (32, 1, 1)).flatten().tolist()
    dx = torch.randint(-2, 3, (32, 1, 1)).flatten().tolist()
    assert len(set(zip(dy, dx, strict=True))) > 5
    for image, out, y, z in zip(x, moved, dy, dx, strict=True):
        expected = torch.zeros_like(image)
        # out[:, i, j] = image[:, i + y, j + z] where that pixel exists
        expected[:, max(0, -y) : 16 - max(0, y), max(0, -z) : 12 - max(0, z)] = image[
            :, max(0, y) : 16 - max(0, -y), max(0, z) : 12 - max(0, -z)
        ]
        assert torch.equal(out, expected), (y, z)


def test_d_sees_augmented_images_in_training(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    model = tiny_model(augment=["translation"])
    original = model.augment.__call__

    class Spy:
        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return original(x)

    model.augment = Spy()  # type: ignore[assignment]
    fit(model, batches=2)
    assert seen == [4, 4, 4] * 2  # per batch: real and fake for D, fake for G


# -- G's spectral norm, the learning-rate schedule ----------------------------------------------


def test_spectral_norm_on_g_keeps_its_batchnorm() -> None:
    torch.manual_seed(0)
    g = Generator(28, 1, 8, width=8, max_width=32, spectral=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    for _ in range(30):
        g(torch.randn(4, 8))
    layers = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(layers) == 3
    for layer in layers:
        sigma = torch.linalg.matrix_norm(layer.weight.detach().transpose(0, 1).flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)


def test_linear_decay() -> None:
    factor = linear_decay(0.5, 10)
    assert [factor(s) for s in range(11)] == [1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2, 0]
    assert linear_decay(0.0, 4)(2) == 0.5


class _Rates(L.Callback):
    def __init__(self) -> None:
        self.rates: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.rates.append(tuple(opt.param_groups[0]["lr"] for opt in trainer.optimizers))  # type: ignore[arg-type]


def _trainer(epochs: int, rates: _Rates, tmp_path: Path) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rates],
    )


def test_learning_rates_decay_to_zero_and_resume_on_schedule(tmp_path: Path) -> None:
    images, labels = torch.rand(8, 1, 28, 28) * 2 - 1, torch.zeros(8, dtype=torch.long)
    loader = TensorLoader((images, labels), batch_size=4, seed=0)
    whole = _Rates()
    model = tiny_model(lr_decay_start=0.5)
    trainer = _trainer(3, whole, tmp_path)
    trainer.fit(model, train_dataloaders=loader)
    lr = 2e-4
    expected = [1, 1, 1, 1, 2 / 3, 1 / 3]  # 6 batches: constant for 3, then in a line towards 0 at batch 6
    assert whole.rates == [pytest.approx((lr * f, lr * f)) for f in expected]
    # Stopped after epoch 2 and resumed: the third epoch's rates are the uninterrupted run's.
    first = _trainer(2, _Rates(), tmp_path / "a")
    first.fit(tiny_model(lr_decay_start=0.5), train_dataloaders=loader)
    # (a 2-epoch run decays over its own 4 batches; the resume sets the run to 3 epochs)
    first.save_checkpoint(tmp_path / "two.ckpt")
    resumed = _Rates()
    _trainer(3, resumed, tmp_path / "b").fit(
        tiny_model(lr_decay_start=0.5), train_dataloaders=loader, ckpt_path=tmp_path / "two.ckpt"
    )
    assert resumed.rates == whole.rates[4:]
    with pytest.raises(UserInputError, match=r"optimizer.lr_decay_start=1.0 must be in \[0, 1\)"):
        tiny_model(lr_decay_start=1.0)


# -- class-conditional networks ------------------------------------------------------------------


def test_conditional_g_draws_each_class_differently_and_mixes_them() -> None:
    torch.manual_seed(0)
    g = Generator(28, 1, 8, width=8, max_width=32, num_classes=10).eval()
    for m in g.modules():  # trained-like per-class parameters (at init they are all ~the same)
        if isinstance(m, ConditionalBatchNorm):
            nn.init.normal_(m.scale.weight, 1.0, 0.5)
            nn.init.normal_(m.shift.weight, 0.0, 0.5)
    z = torch.randn(1, 8).expand(2, -1)
    three, four = g(z, torch.tensor([3, 4]))
    assert not torch.allclose(three, four, atol=1e-3)
    # one-hot weights are the class itself; half-and-half lies between
    onehot = torch.eye(10)[[3, 4]]
    assert torch.allclose(g(z, onehot), torch.stack([three, four]), atol=1e-6)
    assert not torch.allclose(g(z[:1], (onehot[:1] + onehot[1:]) / 2), three, atol=1e-3)
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        g(z)
    with pytest.raises(ValueError, match="unconditional and takes no labels"):
        Generator(28, 1, 8, width=8, max_width=32)(z, torch.tensor([0, 1]))


def test_projection_d_adds_the_class_embedding_of_its_features() -> None:
    torch.manual_seed(0)
    d = Discriminator(28, 1, width=8, max_width=32, norm="spectral", num_classes=10)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    d.eval()
    a, b = d(x, torch.tensor([0, 0, 0])), d(x, torch.tensor([5, 5, 5]))
    assert not torch.allclose(a, b)
    unconditional, class_term = logit_parts(d, x, torch.tensor([5, 5, 5]))
    assert torch.allclose(b, unconditional + class_term, atol=1e-5)


def logit_parts(d: Discriminator, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """A projection D's logit, recomputed in its two parts: the unconditional head, and <embed(y),
    D's features summed over the start grid (or its FC layer's)>."""
    *body, head = d.net
    h = x
    for layer in body:
        h = layer(h)
    features = h.sum(dim=(2, 3)) if h.dim() == 4 else h
    return head(h).flatten(), (d.embed(labels) * features).sum(dim=1)  # type: ignore[misc]


@pytest.mark.parametrize("fc_width", [0, 1024])
def test_the_class_term_starts_on_the_scale_of_the_unconditional_logit(fc_width: int) -> None:
    """A projection D's class embedding starts small (N(0, 0.02), as D's other weights): with
    torch's N(0, 1) its term was 270x (conv) / 64x (FC) D's head at init, logits of +-200."""
    torch.manual_seed(0)
    d = Discriminator(28, 1, width=64, max_width=1024, num_classes=10, fc_width=fc_width)
    unconditional, class_term = logit_parts(d, torch.rand(64, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (64,)))
    assert class_term.std() < 10 * unconditional.std()
    # G's conditional BatchNorms still start as plain BatchNorms (scale ~1, shift 0)
    g = Generator(28, 1, 8, width=8, max_width=32, num_classes=10, fc_width=16)
    norms = [m for m in g.modules() if isinstance(m, ConditionalBatchNorm)]
    assert len(norms) == 3 and all(abs(m.scale.weight.mean() - 1) < 0.01 and not m.shift.weight.any() for m in norms)


def test_class_labels_follow_the_training_proportions() -> None:
    counts = torch.tensor([5923.0, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])  # MNIST train
    labels = class_labels(10_000, counts, seed=0)
    per_class = torch.bincount(labels, minlength=10)
    assert per_class.sum() == 10_000
    assert (per_class.double() - counts / counts.sum() * 10_000).abs().max() < 1  # rounded shares
    assert torch.equal(labels, class_labels(10_000, counts, seed=0))
    assert not torch.equal(labels, class_labels(10_000, counts, seed=1))
    assert not torch.equal(labels[:20], labels[:20].sort().values)  # shuffled, not in class order


def test_a_conditional_model_trains_on_the_batchs_labels() -> None:
    torch.manual_seed(0)
    model = tiny_model(conditional=True, num_classes=3, d_norm="spectral", loss="hinge")
    model.class_counts.copy_(torch.tensor([4.0, 4.0, 4.0]))
    seen: list[torch.Tensor] = []
    forward = model.generator.forward
    model.generator.forward = lambda z, labels=None: (seen.append(labels), forward(z, labels))[1]  # type: ignore[method-assign]
    trainer = fit(model, batches=2)
    assert optimizer_steps(trainer) == [2, 2]
    assert all(y is not None and y.shape == (4,) for y in seen)


# -- end to end: train.py and generate.py --------------------------------------------------------


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny conditional run of 1 epoch, resumed for a second."""
    run_dir = tmp_path_factory.mktemp("conditional") / "run"
    settings = ["experiment=smoke", "model.conditional=true", "eval.fid=false", "loss=hinge", "model.d_norm=spectral"]
    env = {"DCGAN_DATA_DIR": str(data_dir)}
    check(run_script("train.py", *settings, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", env=env))
    check(run_script("train.py", f"resume={run_dir}", "trainer.max_epochs=2", env=env))
    return run_dir


@pytest.mark.slow
def test_a_conditional_run_trains_resumes_and_draws_one_row_per_class(conditional_run: Path, tmp_path: Path) -> None:
    ckpt = torch.load(conditional_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["conditional"] and ckpt["hyper_parameters"]["num_classes"] == 10
    assert ckpt["epoch"] == 1 and ckpt["state_dict"]["class_counts"].tolist()[:3] == [5923, 6742, 5958]
    assert ckpt["class_names"] == [str(d) for d in range(10)]  # kept across the resume
    # the training grid: one row per class, one fixed latent per column (10 x 10 at 28 px)
    assert read(conditional_run / "samples" / "epoch_0002.png").shape[:2] == (10 * 30 + 2, 10 * 30 + 2)

    def gen(*overrides: str) -> list[Path]:
        return __import__("dcgan.generate").generate.generate(
            compose_generate(f"checkpoint={conditional_run}", f"out_dir={tmp_path}", *overrides)
        )

    [rows] = gen("grid.nrow=4")
    assert rows.name == "grid-last-seed0-classes.png"
    images = cells(rows, 4).reshape(10, 4, 28, 28)
    # the same latents in each row: classes differ, and rows are not copies of each other
    assert all(not np.array_equal(images[0], images[k]) for k in range(1, 10))
    [three] = gen("class=3", "grid.num_images=4", "grid.nrow=4")
    [four] = gen("class=4", "grid.num_images=4", "grid.nrow=4")
    assert np.array_equal(cells(three, 4), images[3]) and np.array_equal(cells(four, 4), images[4])
    assert not np.array_equal(cells(three, 4), cells(four, 4))
    [named] = gen("class='3'", "grid.num_images=4", "grid.nrow=4")  # by name: a string, the class called 3
    assert np.array_equal(cells(named, 4), images[3])
    written = gen("mode=interpolate", "interpolate.classes=[1,7]", "interpolate.steps=5")
    assert [p.name for p in written] == [
        "interpolate-last-seed0-classes1-7.png",
        "interpolate-last-seed0-classes1-7.gif",
    ]
    path = cells(written[0], 5)
    assert np.array_equal(path[0], images[1, 0]) and np.array_equal(path[-1], images[7, 0])
    # samples: each image's class beside it, in the training proportions, and image i drawn as
    # its own class (the same image class=<its label> gives at latent i)
    folder, npz = gen("mode=samples", "samples.num_images=20", "samples.npz=true", "batch_size=7")
    with (folder / "labels.csv").open() as f:
        rows_csv = list(csv.reader(f))
    assert rows_csv[0] == ["file", "label"] and [r[0] for r in rows_csv[1:]] == [f"{i:06d}.png" for i in range(20)]
    labels = np.array([int(r[1]) for r in rows_csv[1:]])
    with np.load(npz) as data:
        assert np.array_equal(data["labels"], labels)
        drawn = data["arr_0"][..., 0]
    assert np.bincount(labels, minlength=10).tolist() == [2] * 10  # MNIST's shares, rounded, of 20
    k = int(labels[5])
    _, npz_k = gen("mode=samples", "samples.num_images=20", "samples.npz=true", f"class={k}")
    with np.load(npz_k) as data:
        assert (data["labels"] == k).all() and np.array_equal(data["arr_0"][5, ..., 0], drawn[5])
    with pytest.raises(
        UserInputError, match=r"class=10 is not a class of the checkpoint: an index 0..9 or a name, one of 0, 1, "
    ):
        gen("class=10")
    with pytest.raises(UserInputError, match="this mode draws one class, so add class=<0..9>"):
        gen("mode=interpolate")
    with pytest.raises(UserInputError, match="mode=fid scores all classes"):
        gen("mode=fid", "class=1")


def test_a_class_is_asked_for_by_index_or_by_the_datas_name() -> None:
    from dcgan.generate import class_index

    model = tiny_model(conditional=True, num_classes=3)
    model.class_names = ["zeta", "alpha", "1"]  # a folder's subfolders, in sorted order
    assert [class_index(c, model, "class") for c in ("alpha", "zeta", "1", 1, 2)] == [1, 0, 2, 1, 2]
    with pytest.raises(
        UserInputError,
        match="class=beta is not a class of the checkpoint: an index 0..2 or a name, one of zeta, alpha, 1$",
    ):
        class_index("beta", model, "class")
    model.class_names = None  # a checkpoint from before class names were kept: indices only
    assert class_index(2, model, "class") == 2
    with pytest.raises(
        UserInputError, match="interpolate.classes=alpha is not a class of the checkpoint: an index 0..2$"
    ):
        class_index("alpha", model, "interpolate.classes")


@pytest.mark.slow
def test_class_on_an_unconditional_checkpoint_is_refused(smoke_run: Path, tmp_path: Path) -> None:
    from dcgan.generate import generate

    with pytest.raises(UserInputError, match="class=3: this checkpoint's generator is unconditional"):
        generate(compose_generate(f"checkpoint={smoke_run}", f"out_dir={tmp_path}", "class=3"))


def test_conditional_training_needs_classes(tmp_path: Path, compose_cfg: Callable[..., object]) -> None:
    from dcgan.train import build

    images = write_image_tree(tmp_path / "flat")  # some images lie outside any subfolder: no classes
    cfg = compose_cfg("dataset=folder", f"dataset.path={tmp_path / 'flat'}", "model.conditional=true")
    with pytest.raises(UserInputError, match="model.conditional=true needs labelled images, and .*flat has no classes"):
        build(cfg)  # type: ignore[arg-type]
    for i, path in enumerate(images):  # every image in a top-level subfolder: classes x and y
        (tmp_path / "classed" / "xy"[i % 2]).mkdir(parents=True, exist_ok=True)
        path.rename(tmp_path / "classed" / "xy"[i % 2] / f"{i}{path.suffix}")
    cfg = compose_cfg("dataset=folder", f"dataset.path={tmp_path / 'classed'}", "model.conditional=true")
    _, model, _ = build(cfg)  # type: ignore[arg-type]
    assert model.num_classes == 2


@pytest.mark.slow
def test_a_checkpoint_from_before_the_variants_still_loads(smoke_run: Path, tmp_path: Path) -> None:
    from dcgan.run import ADDED_SETTINGS, Checkpoint

    ckpt = torch.load(smoke_run / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ADDED_SETTINGS:
        del ckpt["hyper_parameters"][key]
    torch.save(ckpt, tmp_path / "old.ckpt")
    model = Checkpoint.read(tmp_path / "old.ckpt").model()
    assert model.num_classes == 0 and not model.hparams.g_spectral
    z = torch.randn(2, model.hparams.latent_dim)
    reference = Checkpoint.read(smoke_run / "checkpoints" / "last.ckpt").model()
    assert torch.equal(model.generate(z), reference.generate(z))
