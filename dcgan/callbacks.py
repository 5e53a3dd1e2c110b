"""Training callbacks: last.ckpt, sample grids from the fixed noise, epoch timing, FID and best.ckpt."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from dcgan import loop
from dcgan.classifier import ClassifierKey, ClassifierScorer, classifies, load_classifier, reference_scorer
from dcgan.datasets import SPLITS, ImageDataModule
from dcgan.errors import choice, integer, require
from dcgan.files import atomic_path, save_png
from dcgan.images import grid, to_uint8
from dcgan.metrics import (
    FIDScorer,
    InceptionFeatures,
    ReferenceKey,
    min_samples,
    reference_features,
    shard,
)
from dcgan.module import DCGAN
from dcgan.run import Checkpoint as CheckpointFile
from dcgan.sampling import class_labels, class_rows, latents

# Hydra sends this logger to the console and the run's train.log.
log = logging.getLogger(__name__)


def _due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Whether the epoch ending now is an ``every_n_epochs``-th one or the run's last."""
    epoch = trainer.current_epoch + 1  # epochs completed
    return epoch % every_n_epochs == 0 or epoch == trainer.max_epochs


class LastCheckpoint(Checkpoint):
    """``<dirpath>/last.ckpt``: the whole training state after every ``every_n_epochs``-th
    epoch and after the last one; what ``resume=`` continues from. Written atomically by
    ``AtomicCheckpointIO``, so a crash during the write leaves the previous one whole.

    Lightning's ``ModelCheckpoint(save_top_k=0, save_last=True)`` writes ``last.ckpt`` only
    when training ends, so a run killed at epoch 19 of 20 would have lost all of it. As a
    ``Checkpoint``, Lightning runs this after the other callbacks: the epoch's FID and best
    FID are in the file. After the epochs in ``keep_epochs`` the file is also kept as
    ``epoch_<n>.ckpt`` (e.g. to score the run's FID along the way: tools/time_to_fid.py).
    """

    def __init__(self, dirpath: str | Path, every_n_epochs: int, keep_epochs: Sequence[int] = ()) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_epochs = integer(every_n_epochs, "callbacks.checkpoint.every_n_epochs")
        self.keep_epochs = {integer(e, "callbacks.checkpoint.keep_epochs[]") for e in keep_epochs}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if _due(trainer, self.every_n_epochs) or epoch in self.keep_epochs:
            # Under DDP, Lightning syncs the epoch's sync_dist metrics when they are first
            # read, and rank 0's progress bar has read them already: reading them here makes
            # the other ranks sync too, before the save's barrier, so the ranks' collective
            # calls pair up (ModelCheckpoint does the same).
            _ = trainer.callback_metrics
            trainer.save_checkpoint(self.path, weights_only=False)  # every rank calls it; rank 0 writes
            if epoch in self.keep_epochs and trainer.is_global_zero:
                with atomic_path(self.path.with_name(f"epoch_{epoch:04d}.ckpt")) as tmp:
                    shutil.copyfile(self.path, tmp)


class SampleGrid(L.Callback):
    """Every ``every_n_epochs`` epochs, G's images of the module's fixed noise batch: a PNG in
    ``dirpath`` (``epoch_0001.png``, ...) and an image ``samples`` in TensorBoard. A conditional
    G draws one row per class, its first ``nrow`` fixed latents (default: as many as classes)
    as the columns."""

    def __init__(self, dirpath: str | Path, every_n_epochs: int, nrow: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = integer(every_n_epochs, "callbacks.samples.every_n_epochs")
        self.nrow = nrow

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not _due(trainer, self.every_n_epochs):
            return
        epoch = trainer.current_epoch + 1  # epochs completed
        assert isinstance(pl_module, DCGAN)
        if pl_module.num_classes:  # one row per class, one fixed latent per column
            z, labels = class_rows(pl_module.fixed_noise[: self.nrow or pl_module.num_classes], pl_module.num_classes)
            images = to_uint8(pl_module.generate(z, labels.to(z.device)))
            picture = grid(images, len(z) // pl_module.num_classes)
        else:
            images = to_uint8(pl_module.generate(pl_module.fixed_noise))
            picture = grid(images, self.nrow or math.ceil(math.sqrt(len(images))))
        save_png(picture, self.dirpath / f"epoch_{epoch:04d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Same x axis as the scalars: batches trained so far.
                step = loop.batches_trained(trainer)
                array = np.asarray(picture)
                logger.experiment.add_image(
                    "samples", array, global_step=step, dataformats="HWC" if array.ndim == 3 else "HW"
                )


class EpochTimer(L.Callback):
    """Logs each training epoch's wall time (``time/epoch_s``) and images per second. (An
    epoch resumed mid-way is timed from the resume.)"""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a mid-epoch resume starts no epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self._images += len(batch[0])  # (images, labels)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        pl_module.log("time/epoch_s", seconds, on_step=False, on_epoch=True, sync_dist=True)
        images_per_s = self._images * trainer.world_size / seconds
        pl_module.log("time/images_per_s", images_per_s, on_step=False, on_epoch=True, sync_dist=True)


class FIDCallback(L.Callback):
    """FID of generated images during training, and the lowest-FID weights in ``best.ckpt``.

    After every ``every_n_epochs`` epochs (and the last), G (eval mode) draws ``num_samples``
    images from fixed latents (``seed``); their FID against the reference features (cached, see
    ``dcgan.metrics``) is logged as ``val/fid`` (``val/kid`` with ``kid=True``) and appended to
    ``metrics_file`` as a JSON line stating N, split and size. GAN quality is not monotone in
    training time, so a lower FID than any before saves ``checkpoint_dir/best.ckpt``. The choice
    is made against training images (``reference_split``); when training ends, the chosen
    weights are scored once against ``final_split`` (the test split, which the choice never
    saw) with ``final_num_samples`` images: the number to report, the last line of
    ``metrics_file`` and ``final_fid``.

    Under several processes each rank scores its share of the latents and of the reference
    features; torchmetrics combines the states, and every rank gets the same FID.
    """

    def __init__(
        self,
        *,
        checkpoint_dir: str | Path,
        metrics_file: str | Path,
        every_n_epochs: int,
        num_samples: int | str,
        weights: str | None,
        cache_dir: str | Path,
        reference_split: str,
        reference_samples: int | None,
        batch_size: int | str,
        kid: bool,
        precision_recall: bool,
        seed: int,
        final_split: str | None,
        final_num_samples: int,
    ) -> None:
        least, why = min_samples(precision_recall, "eval")
        ok = num_samples == "auto" or (isinstance(num_samples, int) and num_samples >= least)
        require(ok, "eval.num_samples", num_samples, f"must be auto or an integer >= {least}{why}")
        choice(reference_split, "eval.reference_split", SPLITS)
        if final_split is not None:
            choice(final_split, "eval.final_split", SPLITS)
        self.final_split = final_split
        self.final_num_samples = integer(final_num_samples, "eval.final_num_samples", least)
        self.final_fid: float | None = None
        self.checkpoint_dir = Path(checkpoint_dir)
        self.metrics_file = Path(metrics_file)
        self.every_n_epochs = integer(every_n_epochs, "eval.every_n_epochs")
        self.num_samples_setting = num_samples
        self.cache_dir = cache_dir
        self.reference_split = reference_split
        self.reference_samples = reference_samples
        self.kid, self.precision_recall = kid, precision_recall
        self.seed = seed
        # Loaded now, so missing or corrupt weights fail before any data is read.
        self.extractor = InceptionFeatures(weights, batch_size)
        self.scorer: FIDScorer | None = None
        self.best_fid = math.inf
        self.best_epoch = 0

    @staticmethod
    def auto_num_samples(device: torch.device) -> int:
        # 10k as in the published tables on a GPU; 1k on a CPU, where Inception runs ~14 images/s.
        return 10_000 if device.type == "cuda" else 1_000

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.scorer is not None:
            return
        device = trainer.strategy.root_device
        n = self.num_samples_setting
        self.num_samples = self.auto_num_samples(device) if n == "auto" else int(n)
        datamodule = trainer.datamodule
        if not isinstance(datamodule, ImageDataModule):
            raise TypeError("FIDCallback needs an ImageDataModule to find the reference images")
        self.extractor.to(device)
        features, self.key = self._reference(trainer, self.reference_split)
        rank, world = trainer.global_rank, trainer.world_size
        self.rank_world = (rank, world)
        self.num_reference = len(features)
        self.scorer = self._scorer(features, self.num_samples)
        assert isinstance(pl_module, DCGAN)
        self.latents = shard(latents(self.num_samples, pl_module.hparams.latent_dim, self.seed), rank, world)

    def _scorer(self, features: torch.Tensor, num_samples: int) -> FIDScorer:
        """A scorer against ``features`` (all processes'), fed this process's share."""
        rank, world = self.rank_world
        prc_real = features if self.precision_recall else None
        share = shard(features, rank, world)
        return FIDScorer(self.extractor, share, len(features), num_samples, kid=self.kid, prc_real=prc_real)

    def _reference(self, trainer: L.Trainer, split: str) -> tuple[torch.Tensor, ReferenceKey]:
        reference = trainer.datamodule.reference(split)  # type: ignore[attr-defined]
        # Rank 0 computes (or loads) and caches the reference; the others then read the cache.
        if trainer.is_global_zero:
            features, key, _ = reference_features(reference, self.reference_samples, self.extractor, self.cache_dir)
        trainer.strategy.barrier("fid-reference")
        if not trainer.is_global_zero:
            features, key, _ = reference_features(reference, self.reference_samples, self.extractor, self.cache_dir)
        return features, key

    def _labels(self, pl_module: DCGAN, n: int) -> torch.Tensor | None:
        """A conditional model's labels: the training set's class proportions, this rank's share."""
        if not pl_module.num_classes:
            return None
        return shard(class_labels(n, pl_module.class_counts.cpu(), self.seed), *self.rank_world)

    def _append(self, record: dict[str, Any]) -> None:
        self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Score the weights chosen on the selection split (``best.ckpt``) once on ``final_split``
        (the test split: unseen by the choice), at ``final_num_samples``, into ``metrics_file``."""
        best = self.checkpoint_dir / "best.ckpt"
        if self.final_split is None or not self.best_epoch or not best.is_file():
            return
        start = time.perf_counter()
        features, key = self._reference(trainer, self.final_split)
        model = CheckpointFile.read(best).model(trainer.strategy.root_device)
        n, (rank, world) = self.final_num_samples, self.rank_world
        scorer = self._scorer(features, n)
        z = shard(latents(n, model.hparams.latent_dim, self.seed), rank, world)
        result = scorer.score(model.generate, z, self._labels(model, n))
        self.final_fid = result["fid"]
        seconds = time.perf_counter() - start
        if trainer.is_global_zero:
            for logger in trainer.loggers:  # (self.log is closed once training ends) for the HPARAMS tab
                logger.log_metrics({"val/fid_final": self.final_fid}, step=loop.batch_index(trainer))
            self._append(
                {
                    "checkpoint": "best.ckpt",
                    "epoch": self.best_epoch,
                    "selected_by": {
                        "fid": self.best_fid,
                        "num_samples": self.num_samples,
                        "reference": asdict(self.key),
                    },
                    **result,
                    "num_samples": n,
                    "num_reference": len(features),
                    "reference": asdict(key),
                    "seconds": round(seconds, 2),
                }
            )
            log.info(
                f"best.ckpt (epoch {self.best_epoch}, chosen by FID vs {self.key.split} images): FID "
                f"{result['fid']:.2f} ({n} generated vs {len(features)} {key.dataset} {key.split} images, "
                f"{seconds:.0f} s)"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not _due(trainer, self.every_n_epochs):
            return
        epoch = trainer.current_epoch + 1
        assert self.scorer is not None and isinstance(pl_module, DCGAN)
        start = time.perf_counter()
        result = self.scorer.score(pl_module.generate, self.latents, self._labels(pl_module, self.num_samples))
        seconds = time.perf_counter() - start
        if trainer.world_size > 1:
            # Every rank computes the same FID from all ranks' features; this line, in each
            # process's log, shows it.
            log.info("Epoch %d: rank %d of %d: FID %.6f", epoch, trainer.global_rank, trainer.world_size, result["fid"])
        pl_module.log("val/fid", result["fid"], on_step=False, on_epoch=True, sync_dist=True)
        if "kid_mean" in result:
            pl_module.log("val/kid", result["kid_mean"], on_step=False, on_epoch=True, sync_dist=True)
        for key in ("precision", "recall"):
            if key in result:
                pl_module.log(f"val/{key}", result[key], on_step=False, on_epoch=True, sync_dist=True)
        improved = result["fid"] < self.best_fid
        if improved:
            self.best_fid, self.best_epoch = result["fid"], epoch
        pl_module.log("val/fid_best", self.best_fid, on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero:
            record = {
                "epoch": epoch,
                "batches": loop.batches_trained(trainer),
                **result,
                "num_samples": self.num_samples,
                "num_reference": self.num_reference,
                "reference": asdict(self.key),
                "seconds": round(seconds, 2),
                "best": improved,
            }
            self._append(record)
            log.info(
                f"Epoch {epoch}: FID {result['fid']:.2f} ({self.num_samples} generated vs {self.num_reference} "
                f"{self.key.dataset} {self.key.split} images at {self.key.image_size}px, {seconds:.0f} s)"
                + (" - new best" if improved else "")
            )
        if improved:
            # The callback's state (best FID) is saved with it, so a resumed run keeps it.
            trainer.save_checkpoint(self.checkpoint_dir / "best.ckpt", weights_only=False)

    def state_dict(self) -> dict[str, float]:
        return {"best_fid": self.best_fid, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.best_fid = float(state_dict["best_fid"])
        self.best_epoch = int(state_dict["best_epoch"])


class ClassifierCallback(L.Callback):
    """What G draws, by a classifier of the dataset's classes (``dcgan.classifier``; MNIST and
    Fashion-MNIST, trained once and cached in ``cache_dir``): every ``every_n_epochs`` epochs
    (and the last), ``num_samples`` images from fixed latents (``seed``; a conditional G's labels
    in the training proportions) give ``val/fid_lenet`` (a Fréchet distance of the classifier's
    features against the same real images as FID: not FID), ``val/classes_covered``,
    ``val/class_kl``, the class histogram (TensorBoard) and, for a conditional G,
    ``val/cond_accuracy``; each evaluation is a JSON line of ``metrics_file``. Cheap: seconds
    for 10,000 images on a CPU, so it can run every epoch."""

    def __init__(
        self,
        *,
        metrics_file: str | Path,
        every_n_epochs: int,
        num_samples: int,
        cache_dir: str | Path,
        reference_split: str,
        reference_samples: int | None,
        seed: int,
        train_samples: int | None = None,
    ) -> None:
        choice(reference_split, "eval.reference_split", SPLITS)
        if train_samples is not None:
            integer(train_samples, "eval.classifier_train_samples", 100)
        self.train_samples = train_samples
        self.metrics_file = Path(metrics_file)
        self.every_n_epochs = integer(every_n_epochs, "eval.classifier_every_n_epochs")
        self.num_samples = integer(num_samples, "eval.classifier_num_samples", 200)
        self.cache_dir, self.reference_split, self.reference_samples = cache_dir, reference_split, reference_samples
        self.seed = seed
        self.scorer: ClassifierScorer | None = None  # None: not set up, or no classifier of the data

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.scorer is not None:
            return
        datamodule = trainer.datamodule
        if not isinstance(datamodule, ImageDataModule) or not classifies(datamodule.name):
            log.info(
                "no classifier of %s: class coverage is measured on MNIST and Fashion-MNIST",
                getattr(datamodule, "source", "this data"),
            )
            return
        key = ClassifierKey(datamodule.name, datamodule.image_size, train_samples=self.train_samples)
        root = datamodule.root  # type: ignore[attr-defined]
        # Rank 0 trains (or loads) and caches it; the others then read the cache.
        if trainer.is_global_zero:
            classifier = load_classifier(datamodule.name, root, self.cache_dir, key)
        trainer.strategy.barrier("classifier")
        if not trainer.is_global_zero:
            classifier = load_classifier(datamodule.name, root, self.cache_dir, key)
        classifier.net.to(trainer.strategy.root_device)
        rank, world = trainer.global_rank, trainer.world_size
        reference = datamodule.reference(self.reference_split)
        self.scorer = reference_scorer(classifier, reference, self.reference_samples, rank, world)
        n = min(len(reference), self.reference_samples or len(reference))
        self.real = f"{n} {datamodule.name} {self.reference_split} images"
        assert isinstance(pl_module, DCGAN)
        self.latents = shard(latents(self.num_samples, pl_module.hparams.latent_dim, self.seed), rank, world)
        self.labels = None
        if pl_module.num_classes:
            self.labels = shard(class_labels(self.num_samples, self.scorer.real_counts.float(), self.seed), rank, world)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.scorer is None or not _due(trainer, self.every_n_epochs):
            return
        assert isinstance(pl_module, DCGAN)
        start = time.perf_counter()
        result = self.scorer.score(pl_module.generate, self.latents, self.labels)
        seconds = time.perf_counter() - start
        for key in ("fid_lenet", "classes_covered", "class_kl", "cond_accuracy"):
            if key in result:
                pl_module.log(f"val/{key}", float(result[key]), on_step=False, on_epoch=True, sync_dist=True)  # type: ignore[arg-type]
        if not trainer.is_global_zero:
            return
        epoch, step = trainer.current_epoch + 1, loop.batches_trained(trainer)
        histogram = torch.tensor(result["class_histogram"], dtype=torch.float64)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                _add_class_histogram(logger, histogram, step)
        record = {
            "epoch": epoch,
            "batches": step,
            **result,
            "num_samples": self.num_samples,
            "reference": self.real,
            "seconds": round(seconds, 2),
        }
        self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        conditional = f", conditional accuracy {result['cond_accuracy']:.3f}" if "cond_accuracy" in result else ""
        log.info(
            f"Epoch {epoch}: classes covered {result['classes_covered']}/{len(histogram)}, class KL "
            f"{result['class_kl']:.4f}{conditional}, fid_lenet {result['fid_lenet']:.3f} ({self.num_samples} "
            f"generated vs {self.real}, {seconds:.1f} s)"
        )


def _add_class_histogram(logger: TensorBoardLogger, counts: torch.Tensor, step: int) -> None:
    """The predicted classes of the generated images as a TensorBoard histogram (one bucket per class)."""
    classes = torch.arange(len(counts), dtype=torch.float64)
    logger.experiment.add_histogram_raw(
        "val/classes",
        min=0.0,
        max=float(len(counts) - 1),
        num=int(counts.sum()),
        sum=float((classes * counts).sum()),
        sum_squares=float((classes**2 * counts).sum()),
        bucket_limits=(classes + 0.5).tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )
