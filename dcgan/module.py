"""The DCGAN LightningModule: generator and discriminator trained with manual optimization; what
a NaN or infinite loss does to an update (``NonFiniteGuard``); the average of G's weights (``EMA``)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from dcgan import loop
from dcgan.augment import DiffAugment
from dcgan.errors import TrainingDiverged, UserInputError, choice, integer, require
from dcgan.losses import (
    LABELLED_LOSSES,
    LOSSES,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    instance_noise_std,
    r1_penalty,
)
from dcgan.networks import Discriminator, Generator
from dcgan.speed import PLAIN, Speed

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]


class DCGAN(L.LightningModule):
    """A DCGAN: ``Generator`` and ``Discriminator`` sized from ``image_size``, trained with one of
    the losses of dcgan/losses.py, one D update per batch and one G update every
    ``d_steps_per_g`` batches.

    Plain values only (saved as hyperparameters): ``DCGAN.load_from_checkpoint(path)`` rebuilds
    the networks from the checkpoint alone. Not saved: the optimizer factories (e.g.
    ``partial(torch.optim.Adam, lr=2e-4)``, for training), ``speed`` (dcgan/speed.py; None: plain
    torch) and ``lr_decay_start`` (``linear_decay``; None: constant learning rates).

    Args (their meaning and defaults: ``model:`` in conf/train.yaml):
        image_size, channels: the images, (channels, image_size, image_size).
        latent_dim: size of the noise vector z ~ N(0, I).
        g_width, d_width, max_width, start_grid, g_stem, g_upsample, fc_width, d_dropout, d_norm,
        d_minibatch_std, skips, g_spectral: the networks (dcgan/networks.py).
        conditional, num_classes: class-conditional G and D (``num_classes``: the dataset's).
        loss, gp_weight: the loss (dcgan/losses.py), the weight of a gradient penalty (0: none).
        r1_weight, r1_every: R1 penalty on real images (0: none), taken every ``r1_every`` batches.
        augment: DiffAugment's transforms of D's inputs, e.g. ``["translation", "cutout"]`` ([]: none).
        d_steps_per_g: D updates per G update; each D update consumes one batch.
        real_label, fake_label: D's targets (ns, ls); 0.9 / 0.0 is one-sided label smoothing.
        instance_noise: initial std of Gaussian noise added to D's inputs (real and fake),
            annealed linearly to 0 over ``instance_noise_anneal_steps`` batches (``None``: the run).
        num_fixed_samples: size of the fixed noise batch behind the sample grids.
        nonfinite_loss: ``stop`` or ``skip`` on a NaN or infinite loss (``NonFiniteGuard``).
        ema_decay, ema_start: an average of G's weights (``EMA``; decay 0: none) from batch ``ema_start``.
    """

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        latent_dim: int,
        g_width: int,
        d_width: int,
        max_width: int,
        start_grid: int | None,
        g_stem: str,
        g_upsample: str,
        fc_width: int,
        d_dropout: float,
        d_norm: str,
        d_minibatch_std: int,
        skips: bool,
        g_spectral: bool,
        conditional: bool,
        num_classes: int | None,
        loss: str,
        gp_weight: float,
        r1_weight: float,
        r1_every: int,
        augment: list[str],
        d_steps_per_g: int,
        real_label: float,
        fake_label: float,
        instance_noise: float,
        instance_noise_anneal_steps: int | None,
        num_fixed_samples: int,
        nonfinite_loss: str,
        ema_decay: float,
        ema_start: int,
        g_optimizer: OptimizerFactory | None = None,
        d_optimizer: OptimizerFactory | None = None,
        speed: Speed | None = None,
        lr_decay_start: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(augment, Sequence) and not isinstance(augment, str):
            augment = list(augment)  # a plain list in the checkpoint, not Hydra's ListConfig
        _check_settings(locals())
        self.speed = speed or PLAIN
        for key, factory in (("generator", g_optimizer), ("discriminator", d_optimizer)):
            if factory is not None:
                self.speed.check_optimizer(factory, key)
        self.save_hyperparameters(ignore=["g_optimizer", "d_optimizer", "speed", "lr_decay_start"], logger=False)
        self.automatic_optimization = False
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        ok = lr_decay_start is None or 0.0 <= lr_decay_start < 1.0
        require(ok, "optimizer.lr_decay_start", lr_decay_start, "must be in [0, 1) or null (constant rates)")
        self.lr_decay_start = lr_decay_start
        self._lr_factor: Callable[[int], float] | None = None
        classes = num_classes if conditional else 0
        assert classes is not None  # checked by _check_settings
        self.generator = Generator(
            image_size,
            channels,
            latent_dim,
            g_width,
            max_width,
            g_stem,
            classes,
            g_spectral,  # type: ignore[arg-type]
            fc_width,
            g_upsample,
            start_grid,
            skips,
        )
        self.discriminator = Discriminator(
            image_size,
            channels,
            d_width,
            max_width,
            d_dropout,
            d_norm,
            classes,
            fc_width,
            d_minibatch_std,
            start_grid,
            skips,
        )
        self.augment = DiffAugment(augment)
        self.generator_ema = EMA(self.generator, ema_decay, ema_start) if ema_decay > 0 else None
        # A buffer, not an attribute: it follows the module to the GPU and lives in the
        # checkpoint, so grids stay comparable across epochs and across a resume.
        self.register_buffer("fixed_noise", torch.randn(num_fixed_samples, latent_dim))
        if conditional:
            # Each class's number of training images, set when training starts: FID and
            # generate.py draw labels in these proportions.
            self.register_buffer("class_counts", torch.zeros(num_classes))
        # The data's class names (a folder's subfolders), set with class_counts and saved in the
        # checkpoint: generate.py's class=<name>. None: unconditional, or a checkpoint from before.
        self.class_names: list[str] | None = None
        self.nonfinite = NonFiniteGuard(nonfinite_loss)
        self._last_g_loss: Tensor | None = None

    # -- sampling --------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """The classes G draws on request (0: an unconditional model)."""
        return self.hparams.num_classes if self.hparams.conditional else 0

    def generate(self, z: Tensor, labels: Tensor | None = None, batch_size: int = 512, ema: bool = True) -> Tensor:
        """Latents (N, latent_dim) (and for a conditional model class labels (N,)) -> images
        (N, C, S, S) in [-1, 1], in batches, by the EMA of G's weights if there is one and
        ``ema``, else by G; in eval mode (BatchNorm running statistics)."""
        net = self.generator_ema.net if ema and self.generator_ema is not None else self.generator
        was_training = net.training
        net.eval()
        chunks = [None] * math.ceil(len(z) / batch_size) if labels is None else labels.to(self.device).split(batch_size)
        try:
            with torch.inference_mode():
                return torch.cat([net(c.to(self.device), y) for c, y in zip(z.split(batch_size), chunks, strict=True)])
        finally:
            net.train(was_training)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.generate(z, labels)

    # -- training --------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """One D update on the batch's images (N, C, S, S) in [-1, 1], then one G update every
        ``d_steps_per_g`` batches. G runs forward once: D sees ``fake.detach()``, G's update
        reuses ``fake``. A conditional G draws the batch's labels (N,), the data's class mix."""
        hp = self.hparams
        real = batch[0].contiguous(memory_format=self.speed.memory_format)
        labels = batch[1] if self.num_classes else None
        g_opt, d_opt = self.optimizers()  # type: ignore[misc]
        step = loop.batch_index(self.trainer)
        update_g = (step + 1) % hp.d_steps_per_g == 0
        noise_std = self.current_instance_noise(step)
        if self._lr_factor is not None:  # from the batch count: a resume, even to more epochs, stays on schedule
            for opt in (g_opt, d_opt):
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * self._lr_factor(step)

        z = torch.randn(real.shape[0], hp.latent_dim, device=real.device)
        with torch.set_grad_enabled(update_g):
            fake = self.generator(z, labels)

        self.toggle_optimizer(d_opt)
        r1_due = hp.r1_weight > 0 and step % hp.r1_every == 0
        real = real.detach().requires_grad_(r1_due)
        real_logits, fake_logits = self.critic(real, labels, noise_std), self.critic(fake.detach(), labels, noise_std)
        d_loss = discriminator_loss(hp.loss, real_logits, fake_logits, hp.real_label, hp.fake_label)
        if hp.gp_weight > 0:
            critic = lambda x: self.critic(x, labels, noise_std)  # noqa: E731
            d_loss = d_loss + hp.gp_weight * gradient_penalty(critic, real, fake)
        if r1_due:  # lazy (Karras et al. 2020): every r1_every batches, r1_every times the weight
            d_loss = d_loss + hp.r1_weight * hp.r1_every * r1_penalty(real_logits, real)
        self.nonfinite.update(self, d_opt, d_loss, "d_loss", batch_idx)
        self.untoggle_optimizer(d_opt)

        if update_g:
            self.toggle_optimizer(g_opt)
            g_loss = generator_loss(hp.loss, self.critic(fake, labels, noise_std))
            self.nonfinite.update(self, g_opt, g_loss, "g_loss", batch_idx)
            self.untoggle_optimizer(g_opt)
            self._last_g_loss = g_loss.detach()
            if self.generator_ema is not None:
                self.generator_ema.update(self.generator, step)

        # Logging costs Lightning's bookkeeping (~10% of a small step on a CPU) and a GPU sync: log when
        # the logger writes, and at an epoch's last batch (metrics.json, checkpoints see its losses).
        if loop.logger_writes_now(self.trainer) or batch_idx + 1 == self.trainer.num_training_batches:
            self.nonfinite.check()  # before the values are logged, and before an epoch's checkpoints
            self._log_step(d_loss, real_logits, fake_logits, noise_std)

    def critic(self, images: Tensor, labels: Tensor | None, noise_std: float) -> Tensor:
        """D's logits (N,) of images as D sees them in training: with instance noise, augmented."""
        return self.discriminator(self.augment(_noisy(images, noise_std)), labels)

    def current_instance_noise(self, step: int) -> float:
        """The std of the instance noise at batch ``step`` of the run."""
        if self.hparams.instance_noise <= 0:
            return 0.0
        steps = self.hparams.instance_noise_anneal_steps or self.trainer.estimated_stepping_batches
        return instance_noise_std(self.hparams.instance_noise, step, int(steps))

    def _log_step(self, d_loss: Tensor, real_logits: Tensor, fake_logits: Tensor, noise_std: float) -> None:
        values = {
            "train/d_loss": d_loss.detach(),
            "train/d_real": torch.sigmoid(real_logits.detach()).mean(),  # D(x)
            "train/d_fake": torch.sigmoid(fake_logits.detach()).mean(),  # D(G(z)) before G's update
        }
        if self._last_g_loss is not None:  # G's latest loss (with d_steps_per_g > 1, not every batch)
            values["train/g_loss"] = self._last_g_loss
        # One transfer for all values; floats cost the progress bar nothing on later batches.
        floats = dict(zip(values, torch.stack([v.float() for v in values.values()]).tolist(), strict=True))
        for name in ("train/d_loss", "train/g_loss"):
            if name in floats:
                self.log(name, floats.pop(name), prog_bar=True)
        if noise_std > 0:
            floats["train/instance_noise"] = noise_std
        if self.nonfinite.skipped:
            floats["train/nonfinite_skipped"] = float(self.nonfinite.skipped)
        self.log_dict(floats)

    def on_train_epoch_end(self) -> None:
        # The epoch's last batch logs and so has checked already; an epoch cut short
        # (trainer.max_steps, a callback's stop) may not have.
        self.nonfinite.check()

    # -- setup and checkpoints -------------------------------------------------------------

    def configure_model(self) -> None:
        # Before the Trainer moves the model to its device (which keeps the layout).
        self.speed.apply(self.generator, self.discriminator)

    def setup(self, stage: str) -> None:
        if self.num_classes and stage == "fit" and not self.class_counts.any():
            datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
            counts = datamodule.label_counts()
            require(
                len(counts) == self.num_classes,
                "model.num_classes",
                self.num_classes,
                f"does not match the {len(counts)} classes of the data",
            )
            self.class_counts.copy_(counts)
            self.class_names = list(datamodule.class_names)

    def configure_optimizers(self) -> list[Optimizer]:
        if self.g_optimizer is None or self.d_optimizer is None:
            raise RuntimeError(
                "DCGAN was built without optimizer factories (as load_from_checkpoint does); "
                "pass g_optimizer and d_optimizer to train it"
            )
        g_opt, d_opt = (self.speed.optimizer_factory(f, self.device) for f in (self.g_optimizer, self.d_optimizer))
        optimizers = [g_opt(self.generator.parameters()), d_opt(self.discriminator.parameters())]
        if self.lr_decay_start is not None:
            for opt in optimizers:
                for group in opt.param_groups:
                    group["initial_lr"] = group["lr"]  # saved with the optimizer's state
        return optimizers

    def on_train_start(self) -> None:
        # The run's batch count loads the training data: asked for before a resume's checkpoint
        # is restored (in configure_optimizers), it would build the loader too early to get its
        # saved position in the epoch back, and a resumed run would repeat the epoch's batches.
        if self.lr_decay_start is not None:
            self._lr_factor = linear_decay(self.lr_decay_start, int(self.trainer.estimated_stepping_batches))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite.check()  # a count that includes every batch saved
        checkpoint["nonfinite_skipped"] = self.nonfinite.skipped
        checkpoint["class_names"] = self.class_names

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite.skipped = int(checkpoint["nonfinite_skipped"])
        self.class_names = checkpoint.get("class_names")


def linear_decay(start: float, total: int) -> Callable[[int], float]:
    """The learning rate's factor at batch ``step`` of ``total``: 1 until ``start`` (a share of
    the run), then down in a straight line to 0 at the end (Radford et al.'s DCGAN keeps it
    constant; BigGAN-style recipes and pix2pix decay it)."""
    begin = start * total

    def factor(step: int) -> float:
        return 1.0 if step < begin else max(0.0, (total - step) / max(1.0, total - begin))

    return factor


def _noisy(x: Tensor, std: float) -> Tensor:
    return x + std * torch.randn_like(x) if std > 0 else x


def _check_settings(args: dict[str, Any]) -> None:
    """Refuse values the networks would not (their own sizes are checked in networks.py)."""
    loss = choice(args["loss"], "model.loss", LOSSES)
    for key in ("real_label", "fake_label"):
        require(0.0 <= args[key] <= 1.0, f"model.{key}", args[key], "must be in [0, 1]")
    if (args["real_label"], args["fake_label"]) != (1.0, 0.0) and loss not in LABELLED_LOSSES:
        raise UserInputError(
            f"model.real_label={args['real_label']} / model.fake_label={args['fake_label']}: label smoothing "
            f"applies to the {' and '.join(LABELLED_LOSSES)} losses, and {loss} has no labels; "
            "leave them at 1.0 / 0.0, or use loss=ns or loss=ls"
        )
    gp_weight = args["gp_weight"]
    require(gp_weight >= 0, "model.gp_weight", gp_weight, "must be >= 0")
    require(loss != "wgan_gp" or gp_weight > 0, "model.gp_weight", gp_weight, "must be > 0 with loss=wgan_gp")
    require(args["r1_weight"] >= 0, "model.r1_weight", args["r1_weight"], "must be >= 0")
    integer(args["r1_every"], "model.r1_every")
    for key in ("gp_weight", "r1_weight"):
        if args[key] > 0 and args["d_norm"] == "batch":
            raise UserInputError(
                f"model.{key}={args[key]} needs model.d_norm=none or spectral: the penalty is on each "
                "image's gradient, and BatchNorm in D mixes the images of a batch"
            )
    require(isinstance(args["conditional"], bool), "model.conditional", args["conditional"], "must be true or false")
    if args["conditional"]:
        integer(args["num_classes"], "model.num_classes", 2)
    integer(args["d_steps_per_g"], "model.d_steps_per_g")
    require(args["instance_noise"] >= 0, "model.instance_noise", args["instance_noise"], "must be >= 0")
    steps = args["instance_noise_anneal_steps"]
    ok = steps is None or steps > 0
    require(ok, "model.instance_noise_anneal_steps", steps, "must be > 0 or null (anneal over the whole run)")
    integer(args["num_fixed_samples"], "model.num_fixed_samples")
    require(0.0 <= args["ema_decay"] < 1.0, "model.ema_decay", args["ema_decay"], "must be in [0, 1) (0: no EMA)")
    integer(args["ema_start"], "model.ema_start", 0)
    choice(args["nonfinite_loss"], "model.nonfinite_loss", NONFINITE_ACTIONS)


# --------------------------------------------------------------------------------------------
# non-finite losses

# stop: end the run (TrainingDiverged names the loss and the batch); skip: count and go on.
NONFINITE_ACTIONS = ("stop", "skip")
# Deferred losses are read at the latest after this many updates, however rarely the logger
# writes: each holds a small GPU allocation until then.
MAX_UNCHECKED_LOSSES = 1000


class _Where(NamedTuple):
    """Which loss of which batch (0-based), for the message about a non-finite one."""

    loss: str
    epoch: int
    batch_idx: int
    run_batch_idx: int


class NonFiniteGuard:
    """Backward and step, unless the loss is NaN or infinite (on any process): then the update
    is dropped, and ``action`` says whether the run stops (``TrainingDiverged``) or goes on,
    counting the dropped updates in ``skipped``. Backward runs either way, so DDP's gradient
    reduction stays in step on every process.

    Reading a loss on the host waits for the GPU to finish the batch so far, twice a batch,
    which starves small networks. Where the optimizer can drop its own update on the device
    (fused Adam, AdamW, SGD: the ``found_inf`` input GradScaler uses) and one process trains,
    the losses are read later instead, by ``check``: the module calls it at logging steps and
    before checkpoints, so a run stops up to ``trainer.log_every_n_steps`` batches late, with
    no non-finite update applied.
    """

    def __init__(self, action: str) -> None:
        self.action = action
        self.skipped = 0
        self._unchecked: list[tuple[Tensor, _Where]] = []

    def update(self, module: L.LightningModule, opt: Any, loss: Tensor, name: str, batch_idx: int) -> None:
        """``opt`` (Lightning's wrapped optimizer) steps on the gradients of ``loss``, if finite."""
        trainer = module.trainer
        where = _Where(name, trainer.current_epoch, batch_idx, loop.batch_index(trainer))
        opt.zero_grad(set_to_none=True)
        module.manual_backward(loss)
        loss = loss.detach()
        if self._skips_on_device(trainer, opt.optimizer):
            opt.optimizer.found_inf = torch.isfinite(loss).logical_not().float()
            try:
                opt.step()
            finally:
                del opt.optimizer.found_inf
            self._unchecked.append((loss, where))
            if len(self._unchecked) >= MAX_UNCHECKED_LOSSES:
                self.check()
            return
        finite = bool(torch.isfinite(loss))
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            opt.step()
            return
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        self._dropped(value if not math.isfinite(value) else "not finite on another process", where)

    @staticmethod
    def _skips_on_device(trainer: L.Trainer, optimizer: Optimizer) -> bool:
        return (
            trainer.world_size == 1
            and getattr(optimizer, "_step_supports_amp_scaling", False)
            # A GradScaler (16-mixed) sets found_inf itself.
            and getattr(trainer.precision_plugin, "scaler", None) is None
        )

    def check(self) -> None:
        """Read the deferred losses (one transfer) and act on the first non-finite one; their
        updates were already dropped on the device."""
        if not self._unchecked:
            return
        unchecked, self._unchecked = self._unchecked, []
        values = torch.stack([loss.float() for loss, _ in unchecked]).tolist()
        for value, (_, where) in zip(values, unchecked, strict=True):
            if not math.isfinite(value):
                self._dropped(value, where)

    def _dropped(self, value: float | str, where: _Where) -> None:
        at = f"epoch {where.epoch + 1}, batch {where.batch_idx + 1} (batch {where.run_batch_idx + 1} of the run)"
        if self.action == "stop":
            raise TrainingDiverged(f"{where.loss} is {value} at {at}")
        self.skipped += 1
        if self.skipped == 1:
            log.warning("%s is %s at %s; skipping such updates (model.nonfinite_loss=skip)", where.loss, value, at)


# --------------------------------------------------------------------------------------------
# an exponential moving average of G's weights


class EMA(nn.Module):
    """An exponential moving average of a network's weights (``net``, a copy, never trained):
    after each update of the network at batch ``step``, ``ema = decay * ema + (1 - decay) *
    weights``; before ``start`` it copies the weights instead (the early weights are noise).
    Averaged weights draw better images than the last ones (Yazıcı et al. 2019; Karras et al.).

    Buffers (BatchNorm's running statistics) are copied, not averaged, as StyleGAN2-ADA does:
    they are averages over batches already, and those of the averaged weights would need
    extra forward passes to measure.
    """

    def __init__(self, net: nn.Module, decay: float, start: int) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).requires_grad_(False)
        self.decay, self.start = decay, start

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        weight = 1.0 - self.decay if step >= self.start else 1.0
        for average, current in zip(self.net.parameters(), net.parameters(), strict=True):
            average.lerp_(current.detach(), weight)
        for average, current in zip(self.net.buffers(), net.buffers(), strict=True):
            average.copy_(current)
