"""What a NaN or infinite loss does: the update is dropped, then the run stops or goes on.

``NonFiniteGuard.update`` replaces ``backward(); step()`` in a manual-optimization training step.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer

from dcgan import loop
from dcgan.errors import TrainingDiverged

log = logging.getLogger(__name__)

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
