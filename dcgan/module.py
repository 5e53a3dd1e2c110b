"""The DCGAN LightningModule: generator and discriminator trained with manual optimization."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from dcgan.errors import TrainingDiverged, UserInputError
from dcgan.losses import discriminator_loss, generator_loss, instance_noise_std
from dcgan.networks import Discriminator, Generator
from dcgan.speed import Speed

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]

# What a NaN or infinite loss does: stop the run, or skip that update and count it.
NONFINITE_ACTIONS = ("stop", "skip")
# Losses read at the latest after this many updates, however rarely the logger writes: each
# holds a small GPU allocation until then.
MAX_UNCHECKED_LOSSES = 1000


class _Where(NamedTuple):
    """Which loss of which batch (0-based), for the message about a non-finite one."""

    loss: str
    epoch: int
    batch_idx: int
    run_batch_idx: int


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserInputError(f"model.{name}={value} must be in [0, 1]")


class DCGAN(L.LightningModule):
    """A DCGAN: ``Generator`` and ``Discriminator`` sized from ``image_size``, trained with the
    non-saturating loss, one D update per batch and one G update every ``d_steps_per_g`` batches.

    The constructor takes plain values only (saved as hyperparameters), so
    ``DCGAN.load_from_checkpoint(path)`` rebuilds the networks from the checkpoint alone. The
    optimizer factories (e.g. ``functools.partial(torch.optim.Adam, lr=2e-4)``) are needed for
    training only and are not saved, as are the ``speed`` settings (how the networks run on
    this machine: layout, fused optimizers, torch.compile; see dcgan/speed.py).

    Args:
        image_size, channels: the images, (channels, image_size, image_size).
        latent_dim: size of the noise vector z ~ N(0, I).
        g_width, d_width, max_width: base widths of G and D and the cap on any layer's width.
        g_stem: ``"conv"`` (ConvTranspose from 1x1) or ``"dense"`` (Linear + reshape).
        d_dropout: dropout after each of D's activations (0 disables).
        d_steps_per_g: D updates per G update; each D update consumes one batch.
        real_label, fake_label: D's targets; 0.9 / 0.0 is one-sided label smoothing.
        instance_noise: initial std of Gaussian noise added to D's inputs (both real and fake),
            annealed linearly to 0 over ``instance_noise_anneal_steps`` batches (``None``: the
            whole run).
        num_fixed_samples: size of the fixed noise batch behind the sample grids.
        nonfinite_loss: a NaN or infinite loss ``"stop"``s the run (``TrainingDiverged``,
            naming the loss and the batch; checkpoints are only written at epoch ends, so
            ``last.ckpt`` keeps the last good state) or is ``"skip"``ped: that network's
            update is dropped and counted in ``train/nonfinite_skipped``. With a fused
            optimizer (on a GPU by default) the update is dropped on the device and the losses
            are read at logging steps, so a run stops up to ``trainer.log_every_n_steps``
            batches later, before any checkpoint, with no non-finite update applied.
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
        g_stem: str,
        d_dropout: float,
        d_steps_per_g: int,
        real_label: float,
        fake_label: float,
        instance_noise: float,
        instance_noise_anneal_steps: int | None,
        num_fixed_samples: int,
        nonfinite_loss: str = "stop",
        g_optimizer: OptimizerFactory | None = None,
        d_optimizer: OptimizerFactory | None = None,
        speed: Speed | None = None,
    ) -> None:
        super().__init__()
        _check_unit_interval("real_label", real_label)
        _check_unit_interval("fake_label", fake_label)
        if not isinstance(d_steps_per_g, int) or d_steps_per_g < 1:
            raise UserInputError(f"model.d_steps_per_g={d_steps_per_g!r} must be an integer >= 1")
        if instance_noise < 0:
            raise UserInputError(f"model.instance_noise={instance_noise} must be >= 0")
        if instance_noise_anneal_steps is not None and instance_noise_anneal_steps <= 0:
            raise UserInputError(
                f"model.instance_noise_anneal_steps={instance_noise_anneal_steps} must be > 0 "
                f"or null (anneal over the whole run)"
            )
        if num_fixed_samples < 1:
            raise UserInputError(f"model.num_fixed_samples={num_fixed_samples} must be >= 1")
        if nonfinite_loss not in NONFINITE_ACTIONS:
            raise UserInputError(
                f"model.nonfinite_loss={nonfinite_loss!r} is not known; choose one of {', '.join(NONFINITE_ACTIONS)}"
            )
        self.speed = speed if speed is not None else Speed()
        for key, factory in (("generator", g_optimizer), ("discriminator", d_optimizer)):
            if factory is not None:
                self.speed.check_optimizer(factory, key)
        self.save_hyperparameters(ignore=["g_optimizer", "d_optimizer", "speed"], logger=False)
        self.automatic_optimization = False
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.generator = Generator(image_size, channels, latent_dim, g_width, max_width, g_stem)  # type: ignore[arg-type]
        self.discriminator = Discriminator(image_size, channels, d_width, max_width, d_dropout)
        # A buffer, not an attribute: it follows the module to the GPU and lives in the
        # checkpoint, so grids stay comparable across epochs and across a resume.
        self.register_buffer("fixed_noise", torch.randn(num_fixed_samples, latent_dim))
        self.nonfinite_skipped = 0
        self._unchecked: list[tuple[Tensor, _Where]] = []  # losses not yet read (see _update)
        self._last_g_loss: Tensor | None = None
        self._rng_states: dict[str, Any] | None = None

    # -- sampling --------------------------------------------------------------------------

    def generate(self, z: Tensor, batch_size: int = 512) -> Tensor:
        """Latents (N, latent_dim) -> images (N, C, S, S) in [-1, 1], with G in eval mode
        (BatchNorm running statistics), in batches; restores G's previous mode."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            with torch.inference_mode():
                return torch.cat([self.generator(chunk.to(self.device)) for chunk in z.split(batch_size)])
        finally:
            self.generator.train(was_training)

    def forward(self, z: Tensor) -> Tensor:
        return self.generate(z)

    # -- training --------------------------------------------------------------------------

    def configure_model(self) -> None:
        # Before the Trainer moves the model to its device (which keeps the layout).
        self.speed.apply(self.generator, self.discriminator)

    def configure_optimizers(self) -> list[Optimizer]:
        if self.g_optimizer is None or self.d_optimizer is None:
            raise RuntimeError(
                "DCGAN was built without optimizer factories (as load_from_checkpoint does); "
                "pass g_optimizer and d_optimizer to train it"
            )
        g_opt, d_opt = (self.speed.optimizer_factory(f, self.device) for f in (self.g_optimizer, self.d_optimizer))
        return [g_opt(self.generator.parameters()), d_opt(self.discriminator.parameters())]

    def _noise_anneal_steps(self) -> int:
        steps = self.hparams.instance_noise_anneal_steps
        return int(steps if steps is not None else self.trainer.estimated_stepping_batches)

    def current_instance_noise(self, step: int) -> float:
        if self.hparams.instance_noise <= 0:
            return 0.0
        return instance_noise_std(self.hparams.instance_noise, step, self._noise_anneal_steps())

    @staticmethod
    def _with_noise(x: Tensor, std: float) -> Tensor:
        return x + std * torch.randn_like(x) if std > 0 else x

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        """One D update on ``batch`` (N, C, S, S) in [-1, 1], then one G update every
        ``d_steps_per_g`` batches. G runs forward once: D sees ``fake.detach()``, G's update
        reuses ``fake``."""
        real = batch.contiguous(memory_format=self.speed.memory_format)
        g_opt, d_opt = self.optimizers()  # type: ignore[misc]
        # Batches seen across epochs; Lightning restores it on resume (global_step would
        # count both optimizers' steps).
        step = self.trainer.fit_loop.total_batch_idx
        update_g = (step + 1) % self.hparams.d_steps_per_g == 0
        noise_std = self.current_instance_noise(step)

        z = torch.randn(real.shape[0], self.hparams.latent_dim, device=real.device)
        with torch.set_grad_enabled(update_g):
            fake = self.generator(z)

        self.toggle_optimizer(d_opt)
        real_logits = self.discriminator(self._with_noise(real, noise_std))
        fake_logits = self.discriminator(self._with_noise(fake.detach(), noise_std))
        d_loss = discriminator_loss(real_logits, fake_logits, self.hparams.real_label, self.hparams.fake_label)
        self._update(d_opt, d_loss, _Where("d_loss", self.current_epoch, batch_idx, step))
        self.untoggle_optimizer(d_opt)

        if update_g:
            self.toggle_optimizer(g_opt)
            g_loss = generator_loss(self.discriminator(self._with_noise(fake, noise_std)))
            self._update(g_opt, g_loss, _Where("g_loss", self.current_epoch, batch_idx, step))
            self.untoggle_optimizer(g_opt)
            self._last_g_loss = g_loss.detach()
        if self._log_now(batch_idx):
            self._check_losses()  # before the values are logged, and before an epoch's checkpoints
            self._log_step(d_loss, real_logits, fake_logits, noise_std)

    def _log_now(self, batch_idx: int) -> bool:
        """Whether to log this batch: when the logger writes step metrics (every
        ``trainer.log_every_n_steps`` batches) and at an epoch's last batch, so metrics.json
        and checkpoints see the epoch's final losses. Logging every batch costs Lightning's
        bookkeeping per ``self.log`` (~10% of a step at small widths on a CPU) and, on a GPU, a
        device sync per batch to show the values in the progress bar."""
        return bool(
            self.trainer._logger_connector.should_update_logs or batch_idx + 1 == self.trainer.num_training_batches
        )

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
        if self.nonfinite_skipped:
            floats["train/nonfinite_skipped"] = float(self.nonfinite_skipped)
        self.log_dict(floats)

    def _update(self, opt: Any, loss: Tensor, where: _Where) -> None:
        """Backward and step, unless ``loss`` is NaN or infinite (on any rank): then the update is
        dropped, and the run stops or goes on (``nonfinite_loss``). Backward runs either way, so
        DDP's gradient reduction stays in step on every rank.

        Reading a loss on the host waits for the GPU to finish the batch so far, twice a batch,
        which starves small networks. Where the optimizer can drop its own update on the device
        (fused Adam, AdamW, SGD: the ``found_inf`` input GradScaler uses) and one process trains,
        the losses are read later instead, at the next logging step (``_check_losses``)."""
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        loss = loss.detach()
        if self._skips_on_device(opt.optimizer):
            opt.optimizer.found_inf = torch.isfinite(loss).logical_not().float()
            try:
                opt.step()
            finally:
                del opt.optimizer.found_inf
            self._unchecked.append((loss, where))
            if len(self._unchecked) >= MAX_UNCHECKED_LOSSES:
                self._check_losses()
            return
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            opt.step()
            return
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        self._nonfinite(value if not math.isfinite(value) else "not finite on another process", where)

    def _skips_on_device(self, optimizer: Optimizer) -> bool:
        return (
            self.trainer.world_size == 1
            and getattr(optimizer, "_step_supports_amp_scaling", False)
            # A GradScaler (16-mixed) sets found_inf itself.
            and getattr(self.trainer.precision_plugin, "scaler", None) is None
        )

    def _check_losses(self) -> None:
        """Read the losses of the updates since the last check (one transfer); act on the first
        non-finite one. Their updates were already dropped on the device."""
        if not self._unchecked:
            return
        unchecked, self._unchecked = self._unchecked, []
        values = torch.stack([loss.float() for loss, _ in unchecked]).tolist()
        for value, (_, where) in zip(values, unchecked, strict=True):
            if not math.isfinite(value):
                self._nonfinite(value, where)

    def _nonfinite(self, value: float | str, where: _Where) -> None:
        """A dropped update: stop the run or count it (``nonfinite_loss``)."""
        at = f"epoch {where.epoch + 1}, batch {where.batch_idx + 1} (batch {where.run_batch_idx + 1} of the run)"
        if self.hparams.nonfinite_loss == "stop":
            raise TrainingDiverged(f"{where.loss} is {value} at {at}")
        self.nonfinite_skipped += 1
        if self.nonfinite_skipped == 1:
            log.warning("%s is %s at %s; skipping such updates (model.nonfinite_loss=skip)", where.loss, value, at)

    def on_train_epoch_end(self) -> None:
        # The epoch's last batch logs and so has checked already; an epoch cut short
        # (trainer.max_steps, a callback's stop) may not have.
        self._check_losses()

    # -- checkpoints: exact resumes ----------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The random state (latents, instance noise, dropout): a run resumed from this
        # checkpoint on one device continues exactly as the uninterrupted run would have.
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        self._check_losses()  # a count that includes every batch saved
        checkpoint["nonfinite_skipped"] = self.nonfinite_skipped

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_states = checkpoint.get("rng_states")
        self.nonfinite_skipped = int(checkpoint.get("nonfinite_skipped", 0))

    def on_train_start(self) -> None:
        if self.trainer.world_size > 1:
            # Every rank was seeded alike; give each its own noise, or all ranks would feed D
            # the same fakes and the global batch would hold one rank's worth of them.
            step = self.trainer.fit_loop.total_batch_idx + 1
            torch.manual_seed((torch.initial_seed() + 1_000_003 * self.trainer.global_rank + step) % 2**63)
        elif self._rng_states is not None:
            torch.set_rng_state(self._rng_states["torch"])
            if self._rng_states.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._rng_states["cuda"], self.device)
        self._rng_states = None
