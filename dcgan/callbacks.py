"""Training callbacks: sample grids from the fixed noise and epoch timing."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from dcgan.io import image_grid, save_grid
from dcgan.module import DCGAN


class SampleGrid(L.Callback):
    """Every ``every_n_epochs`` epochs, G's images of the module's fixed noise batch: a PNG in
    ``dirpath`` (``epoch_0001.png``, ...) and an image ``samples`` in TensorBoard."""

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1, nrow: int | None = None) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be >= 1")
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.nrow = nrow

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # epochs completed
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            return
        assert isinstance(pl_module, DCGAN)
        images = pl_module.generate(pl_module.fixed_noise)
        nrow = self.nrow or math.ceil(math.sqrt(len(images)))
        save_grid(images, self.dirpath / f"epoch_{epoch:04d}.png", nrow)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Same x axis as the scalars: batches trained so far.
                step = trainer.fit_loop.total_batch_idx + 1
                logger.experiment.add_image("samples", image_grid(images, nrow), global_step=step)


class EpochTimer(L.Callback):
    """Logs each training epoch's wall time (``time/epoch_s``) and images per second."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self._images += len(batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        pl_module.log("time/epoch_s", seconds, on_step=False, on_epoch=True)
        pl_module.log("time/images_per_s", self._images * trainer.world_size / seconds, on_step=False, on_epoch=True)
