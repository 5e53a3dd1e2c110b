"""Surviving faults: checkpoints written atomically, and Ctrl-C or SIGTERM saving the current
state before training stops."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dcgan.io import atomic_path

log = logging.getLogger(__name__)

INTERRUPTED_CKPT = "interrupted.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with every file written to a temporary file beside its
    target, flushed to disk, then renamed onto it: ``kill -9`` or a power cut during a save
    leaves the previous ``last.ckpt`` readable, and a full disk raises ``OutputError`` naming
    the file instead of leaving half of one. (Lightning's own writer streams the bytes into
    the target file.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class InterruptCheckpoint(L.Callback):
    """Ctrl-C or SIGTERM during training: finish the current batch, save the whole training
    state to ``<dirpath>/interrupted.ckpt`` and stop; ``resume=<run dir>`` continues from it.

    SIGTERM (what ``kill``, SLURM and most schedulers send) is caught by Lightning, which stops
    at the end of the batch. Ctrl-C is deferred the same way here, so no optimizer step is cut
    in half; a second Ctrl-C stops at once, still saving. Under DDP every rank stops at the
    same batch. Divergence and other errors are not saved: the last good checkpoint stays
    the one to resume from.
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / INTERRUPTED_CKPT
        self.saved: Path | None = None
        self.signal: signal.Signals | None = None
        self._requested = False
        self._previous_handler: Any = None
        # Whether training proper has begun: Lightning says "training" from the start of fit,
        # before the data and reference features load and before a resume's checkpoint is
        # restored, when there is no state of this run to save (and a resume's own
        # interrupted.ckpt must not be overwritten with fresh weights).
        self._training = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = True
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._requested:
            raise KeyboardInterrupt
        self._requested = True
        log.warning("Ctrl-C: stopping after this batch and saving a checkpoint (Ctrl-C again to stop at once)")

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        # Stop before the next batch rather than at the end of this one: Lightning counts a
        # batch as completed only after its end hooks, and a resume must not repeat it.
        requested = self._requested
        if trainer.world_size > 1:  # a rank that missed the signal must stop at the same batch
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            raise KeyboardInterrupt

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handler()
        if isinstance(exception, KeyboardInterrupt):
            self.signal = signal.SIGINT
        elif isinstance(exception, SIGTERMException):
            self.signal = signal.SIGTERM
        else:
            return
        if not self._training:  # interrupted before training began: nothing to save
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole training state
        self.saved = self.path


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files a killed process left beside its checkpoints (``atomic_path``
    names them ``.<name>.tmp<pid>...``); the checkpoints themselves are whole."""
    for tmp in sorted(folder.glob(".*.tmp*")) if folder.is_dir() else []:
        log.info("Removing %s, left by an interrupted checkpoint write", tmp)
        tmp.unlink(missing_ok=True)
