"""The LightningDataModule every data source shares: holding the images, batching, the position
in the epoch for exact resumes, and scaling to [-1, 1] on the training device.

Every path delivers batches ``(images, labels)``: uint8 images (B, C, S, S) and int64 class
indices (B,) (-1 where the source has no classes). ``on_after_batch_transfer`` turns the images
into floats in [-1, 1] on the training device, so host-to-device copies move 1 byte per pixel.

Two ways to hold the data:
- in memory: the whole dataset decoded once into one uint8 tensor, batches drawn by index
  (``TensorLoader``), optionally held on the GPU. No per-sample Python work while training.
- streamed: a ``DataLoader`` with workers decoding files on the fly, for folders too big to hold.

A source (``MNISTData``, ``FolderData``) says how to load its images and which images FID
compares against (``reference``); the config's ``dataset`` group picks the source.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dcgan import loop
from dcgan.errors import UserInputError, integer, require
from dcgan.images import to_unit_range
from dcgan.networks import check_image_size

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]  # images (B, C, S, S), labels (B,)


class TensorLoader:
    """Batches of in-memory tensors of equal length N (e.g. uint8 images (N, C, S, S) and labels
    (N,)), drawn by index: each batch is a tuple with one slice of each tensor.

    Each epoch draws one permutation from ``(seed, epoch)``, so runs are reproducible and a
    resumed run sees the same order as an uninterrupted one. With ``world_size > 1`` every rank
    uses the same permutation and takes every ``world_size``-th index: shards are disjoint.
    Incomplete last batches are dropped (BatchNorm statistics of a tiny batch hurt GANs).
    ``resume_at=(epoch, batches)``: that epoch starts after its first ``batches`` batches.

    Stateful as Lightning expects of a resumable loader: ``state_dict`` (saved in checkpoints)
    is the position ``position_fn`` gives, (epoch, batches of it trained); a resumed run's
    loader gets it back through ``load_state_dict`` and skips the batches already trained.
    """

    def __init__(
        self,
        tensors: Sequence[Tensor],
        batch_size: int,
        *,
        seed: int,
        epoch_fn: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        resume_at: tuple[int, int] | None = None,
        position_fn: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch_fn = epoch_fn
        self.rank = rank
        self.world_size = world_size
        self.resume_at = resume_at
        self.position_fn = position_fn
        self._epochs_started = 0

    def state_dict(self) -> dict[str, int]:
        if self.position_fn is None:
            return {}
        epoch, batches = self.position_fn()
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if "epoch" in state_dict:
            self.resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))

    def __len__(self) -> int:
        return (len(self.tensors[0]) // self.world_size) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._epochs_started
        self._epochs_started += 1
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        per_rank = n // self.world_size
        order = order[: per_rank * self.world_size][self.rank :: self.world_size]
        order = order.to(self.tensors[0].device, non_blocking=True)
        b = self.batch_size
        start = 0
        if self.resume_at is not None and self.resume_at[0] == epoch and 0 < self.resume_at[1] < len(self):
            start = self.resume_at[1]  # a run stopped mid-epoch: skip the batches it trained on
        self.resume_at = None
        for i in range(start, len(self)):
            index = order[i * b : (i + 1) * b]
            yield tuple(t.index_select(0, index) for t in self.tensors)


class InMemory(NamedTuple):
    """A decoded dataset: uint8 images (N, C, S, S) and int64 labels (N,)."""

    images: Tensor
    labels: Tensor


class ImageDataModule(L.LightningDataModule, abc.ABC):
    """Images as uint8 batches with their labels; a source subclass says where they come from.

    Args (their meaning and defaults: ``dataset:`` in conf/train.yaml):
        image_size: side S of the square images the model sees.
        channels: 1 (grayscale) or 3 (RGB).
        batch_size: images per batch on each device.
        in_memory: ``"auto"`` (hold the data if it needs at most ``memory_limit_mb``), True, False.
        memory_limit_mb: size limit of the ``"auto"`` choice.
        on_device: ``"auto"`` (hold in-memory data on the GPU when training on one), True, False.
        num_workers: DataLoader workers for streaming and for decoding a folder once.
        seed: shuffling seed; ``None`` draws one.
    """

    name: str  # the dataset, in messages and FID cache keys
    class_names: list[str] | None = None  # None: the source has no classes (labels are -1)

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        batch_size: int,
        in_memory: bool | str,
        memory_limit_mb: float,
        on_device: bool | str,
        num_workers: int,
        seed: int | None,
    ) -> None:
        super().__init__()
        check_image_size(image_size, "dataset.image_size")  # the networks follow it
        require(channels in (1, 3), "dataset.channels", channels, "must be 1 (grayscale) or 3 (RGB)")
        integer(batch_size, "dataset.batch_size")
        for key, value in (("in_memory", in_memory), ("on_device", on_device)):
            require(value in ("auto", True, False), f"dataset.{key}", value, "must be auto, true or false")
        self.save_hyperparameters(logger=False)
        # The class the config chose: the checkpoint's datamodule_hyper_parameters rebuild it
        # (hydra.utils.instantiate), e.g. for generate.py mode=fid.
        self.hparams["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.in_memory, self.memory_limit_mb, self.on_device = in_memory, memory_limit_mb, on_device
        self.num_workers = num_workers
        self.seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        self.data: InMemory | None = None
        self.dataset: Dataset[tuple[Tensor, int]] | None = None  # streamed
        self._resume_at: tuple[int, int] | None = None

    # -- what a source provides --------------------------------------------------------------

    @property
    @abc.abstractmethod
    def source(self) -> str:
        """The data, in messages."""

    @abc.abstractmethod
    def load(self) -> InMemory | Dataset[tuple[Tensor, int]]:
        """The decoded dataset, or a dataset that decodes on access (streamed)."""

    @abc.abstractmethod
    def reference(self, split: str) -> ImageDataModule:
        """The real images FID compares against, as a module of this source (on the CPU)."""

    @abc.abstractmethod
    def reference_id(self) -> tuple[str, str]:
        """(split, fingerprint): what, besides the settings, identifies the images for FID's cache."""

    @abc.abstractmethod
    def num_images(self) -> int:
        """How many images the source holds, known before ``setup`` (a folder: its image files)."""

    def classes(self) -> list[str] | None:
        """The class names (label i is ``classes()[i]``), known before ``setup``; None: no classes."""
        return self.class_names

    def label_counts(self) -> Tensor:
        """Images per class (after ``setup``), float (classes,)."""
        names = self.classes()
        assert names, "a source without classes has no label counts"
        streamed = self.data is None
        labels = torch.as_tensor(self.dataset.labels) if streamed else self.data.labels.cpu()  # type: ignore[union-attr]
        return torch.bincount(labels, minlength=len(names)).float()

    def copy(self, **changes: Any) -> ImageDataModule:
        """This source with other settings."""
        settings = {k: v for k, v in self.hparams.items() if k != "_target_"}
        return type(self)(**(settings | changes))

    # -- loading ---------------------------------------------------------------------------

    @property
    def images(self) -> Tensor | None:
        """The in-memory images, uint8 (N, C, S, S); None when streamed or before setup."""
        return self.data.images if self.data is not None else None

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None or self.dataset is not None:
            return
        loaded = self.load()
        if isinstance(loaded, InMemory):
            self.data = loaded
        else:
            self.dataset = loaded
        self._check_batch_size()
        if self.data is not None and self._wants_device():
            device = self.trainer.strategy.root_device  # type: ignore[union-attr]
            self.data = InMemory(self.data.images.to(device), self.data.labels.to(device))
        log.info("%s", self.describe())

    def holds_in_memory(self, num_images: int) -> bool:
        """Whether ``num_images`` images are held in memory (``in_memory``, ``memory_limit_mb``)."""
        if self.in_memory != "auto":
            return bool(self.in_memory)
        return num_images * self.channels * self.image_size**2 <= self.memory_limit_mb * 2**20

    def _wants_device(self) -> bool:
        if self.trainer is None:
            return False
        device = self.trainer.strategy.root_device
        return self.on_device is True or (self.on_device == "auto" and device.type == "cuda")

    def _check_batch_size(self) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        per_rank = len(self) // world
        if per_rank < self.batch_size:
            raise UserInputError(
                f"dataset.batch_size={self.batch_size} is larger than the {per_rank} images each of "
                f"{world} process(es) gets from {self.source}; lower dataset.batch_size to at most "
                f"{per_rank}"
            )

    def __len__(self) -> int:
        if self.data is not None:
            return len(self.data.images)
        if self.dataset is not None:
            return len(self.dataset)  # type: ignore[arg-type]
        raise RuntimeError("call setup() first")

    def describe(self) -> str:
        mode = "in memory" if self.data is not None else f"streamed by {self.num_workers} workers"
        where = f" on {self.data.images.device}" if self.data is not None else ""
        classes = f", {len(self.class_names)} classes" if self.class_names else ""
        return (
            f"dataset {self.source}: {len(self)} images{classes}, {self.channels}x{self.image_size}x"
            f"{self.image_size}, {mode}{where}, batch {self.batch_size}"
        )

    def uint8_batches(self, indices: Tensor, batch_size: int = 256) -> Iterator[Tensor]:
        """The images at ``indices`` (after ``setup``), uint8 (B, C, S, S), batch by batch."""
        assert self.data is not None, "call setup() first"
        for chunk in indices.split(batch_size):
            yield self.data.images[chunk.to(self.data.images.device)].cpu()

    # -- position in the data, for checkpoints ------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The shuffling seed. (How far into its epoch training got is the in-memory loader's
        state, ``TensorLoader.state_dict``: a run stopped mid-epoch and resumed sees the rest of
        that epoch's batches in the same order. Streamed data restarts the epoch with a new
        order, for the batches left.)"""
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict["seed"])
        if "epoch" in state_dict:  # a checkpoint of a version that kept the position here
            self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))

    def _position(self) -> tuple[int, int]:
        """(epoch, batches of it trained), the position in the data a checkpoint saves."""
        assert self.trainer is not None
        batches = loop.batches_into_epoch(self.trainer)
        if batches >= self.trainer.num_training_batches:
            # Saved at an epoch's end (SIGTERM is acted on after the epoch count moved on, with
            # the batch count not yet reset): the next epoch starts from its first batch.
            batches = 0
        return self.trainer.current_epoch, batches

    # -- loaders ---------------------------------------------------------------------------

    def train_dataloader(self) -> TensorLoader | DataLoader[Batch]:
        if self.data is not None:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
            epoch_fn = (lambda: self.trainer.current_epoch) if self.trainer is not None else None
            return TensorLoader(
                self.data,
                self.batch_size,
                seed=self.seed,
                epoch_fn=epoch_fn,
                rank=rank,
                world_size=world,
                resume_at=self._resume_at,
                position_fn=self._position if self.trainer is not None else None,
            )
        assert self.dataset is not None, "call setup() first"
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images, labels = batch
        return to_unit_range(images), labels
