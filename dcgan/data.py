"""Datasets for GAN training: MNIST, Fashion-MNIST and folders of images.

Every path delivers batches of uint8 images (B, C, S, S); ``ImageDataModule.on_after_batch_transfer``
turns them into floats in [-1, 1] on the training device, so host-to-device copies move 1 byte per
pixel and the scaling lives in one place.

Two paths:
- in memory: the whole dataset decoded once into one uint8 tensor, batches drawn by index
  (``TensorLoader``), optionally held on the GPU. No per-sample Python work while training.
- streaming: a ``DataLoader`` with workers decoding files on the fly, for folders too big to hold.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.error import URLError

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dcgan import loop
from dcgan.errors import UserInputError
from dcgan.images import resize_uint8, to_unit_range

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "folder")
SPLITS: tuple[str, ...] = ("train", "test")
# Images per split of MNIST and Fashion-MNIST.
MNIST_SPLIT_SIZES = {"train": 60_000, "test": 10_000}
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
DataSplit = Literal["train", "test"]


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST, read from torchvision's layout (``<root>/<Name>/raw``)


def _torchvision_class(name: str) -> type:
    from torchvision.datasets import MNIST, FashionMNIST

    return {"mnist": MNIST, "fashion_mnist": FashionMNIST}[name]


def _idx_filename(split: DataSplit) -> str:
    return f"{'train' if split == 'train' else 't10k'}-images-idx3-ubyte"


def mnist_raw_dir(name: str, root: str | Path) -> Path:
    """``<root>/MNIST/raw`` or ``<root>/FashionMNIST/raw``: where torchvision keeps the files."""
    return Path(root).expanduser() / _torchvision_class(name).__name__ / "raw"  # as torchvision expands it


def _find_idx_file(name: str, root: str | Path, split: DataSplit) -> Path | None:
    raw = mnist_raw_dir(name, root)
    base = _idx_filename(split)
    for candidate in (raw / f"{base}.gz", raw / base):
        if candidate.is_file():
            return candidate
    return None


def _expected_md5(name: str, filename: str) -> str | None:
    for resource, md5 in _torchvision_class(name).resources:
        if resource == filename:
            return md5
    return None


def read_idx_images(path: Path, expected_md5: str | None = None) -> Tensor:
    """Parse an IDX3 image file (gzipped or not) into uint8 (N, 1, H, W)."""
    raw = path.read_bytes()
    if expected_md5 is not None and hashlib.md5(raw).hexdigest() != expected_md5:
        raise UserInputError(
            f"{path} fails its checksum (expected md5 {expected_md5}): the file is corrupt or "
            f"incomplete. Delete it and download it again, or copy an intact original."
        )
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserInputError(f"{path} is not a readable gzip file ({e}); replace it") from e
    if len(raw) < 16 or int.from_bytes(raw[:4], "big") != 0x00000803:
        raise UserInputError(f"{path} is not an IDX image file (wrong magic number); replace it")
    n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    if len(raw) != 16 + n * h * w:
        raise UserInputError(f"{path} is truncated: header says {n} images of {h}x{w}")
    array = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, h, w)
    return torch.from_numpy(array.copy())


def ensure_mnist_files(name: str, root: str | Path, split: DataSplit, download: bool) -> Path:
    """Return the IDX image file of ``split``, downloading it through torchvision if allowed.

    Raises ``UserInputError`` saying where the files are expected when they are missing
    and cannot be downloaded.
    """
    found = _find_idx_file(name, root, split)
    if found is not None:
        return found
    raw = mnist_raw_dir(name, root)
    reason = "downloading is off (dataset.download=false)"
    if download:
        try:
            _torchvision_class(name)(str(root), train=split == "train", download=True)
        except (RuntimeError, URLError, OSError) as e:
            first_line = str(e).strip().splitlines()
            reason = "the download failed" + (f" ({first_line[-1]})" if first_line else "")
        else:
            reason = f"torchvision's download did not leave it in {raw}"
        found = _find_idx_file(name, root, split)
        if found is not None:
            return found
    base = _idx_filename(split)
    raise UserInputError(
        f"{name} {split} images not found: expected {raw / base}.gz (or unpacked {base}), and "
        f"{reason}. Point dataset.root or the DCGAN_DATA_DIR environment variable at the folder "
        f"that holds {raw.parent.name}/raw/ (e.g. DCGAN_DATA_DIR=/path/to/data make train), or "
        f"run once with internet access so torchvision can download the files there."
    )


def load_mnist_images(name: str, root: str | Path, split: DataSplit, download: bool) -> Tensor:
    """MNIST or Fashion-MNIST images of ``split`` as uint8 (N, 1, 28, 28)."""
    path = ensure_mnist_files(name, root, split, download)
    md5 = _expected_md5(name, path.name) if path.suffix == ".gz" else None
    return read_idx_images(path, md5)


# --------------------------------------------------------------------------------------------
# folders of images


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root``, recursively, sorted; hidden files and folders skipped."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserInputError(f"dataset.path={root} does not exist; point it at a folder of images")
    if not root.is_dir():
        raise UserInputError(f"dataset.path={root} is not a folder; point it at a folder of images")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise UserInputError(
            f"dataset.path={root} holds no images (searched recursively for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}, any case)"
        )
    return files


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to L (channels=1) or RGB (channels=3).

    Transparent pixels are composited onto white; 16/32-bit integer images are scaled to 8 bits
    (PIL's own ``convert`` clips them instead).
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        if img.mode == "F" and array.max() <= 1.0:
            peak = 1.0
        img = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def load_image(path: str | Path, size: int, channels: int) -> Tensor:
    """Decode one image file into uint8 (C, size, size): converted, resized so the shorter
    side is ``size`` (bicubic, antialiased) and center-cropped."""
    with Image.open(path) as img:
        img.load()
        img = _to_mode(img, channels)
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class ImageFolderDataset(Dataset[Tensor]):
    """Image files decoded on access into uint8 (C, size, size).

    An unreadable file raises ``UserInputError``; with ``stand_in=True`` (streamed training
    data, where a file found bad hours into a run must not end it) a warning names it and the
    next readable file in the list stands in, so batches keep their size.
    """

    def __init__(self, files: Sequence[Path], size: int, channels: int, stand_in: bool = False) -> None:
        self.files = list(files)
        self.size = size
        self.channels = channels
        self.stand_in = stand_in

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        if not self.stand_in:
            return self._load(index)
        for offset in range(len(self.files)):
            try:
                return self._load((index + offset) % len(self.files))
            except UserInputError as e:
                warnings.warn(f"skipped an unreadable image: {e}; the next readable one stands in", stacklevel=2)
        raise UserInputError(f"none of the {len(self.files)} image files could be read")

    def _load(self, index: int) -> Tensor:
        path = self.files[index]
        try:
            return load_image(path, self.size, self.channels)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise UserInputError(f"cannot read image {path}: {e}") from e


class _TolerantDataset(Dataset[Tensor | str]):
    """Like ImageFolderDataset, but returns the error text instead of raising."""

    def __init__(self, inner: ImageFolderDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> Tensor | str:
        try:
            return self.inner[index]
        except UserInputError as e:
            return str(e)


def readable_batches(
    files: Sequence[Path], size: int, channels: int, num_workers: int, batch_size: int = 64
) -> Iterator[tuple[list[Tensor], list[tuple[Path, str]]]]:
    """Decode ``files`` in order, batch by batch: the readable images (uint8 (C, S, S)) and the
    (file, error) pairs of the unreadable ones, which are left out."""
    dataset = ImageFolderDataset(files, size, channels)
    loader = DataLoader(_TolerantDataset(dataset), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    index = 0
    for batch in loader:
        good, bad = [], []
        for item in batch:
            if isinstance(item, str):
                bad.append((dataset.files[index], item))
            else:
                good.append(item)
            index += 1
        yield good, bad


def warn_unreadable(bad: list[tuple[Path, str]], total: int) -> None:
    """One warning for all the files that could not be read; an error if none could."""
    if not bad:
        return
    if len(bad) == total:
        raise UserInputError(f"none of the {total} image files could be read; first error: {bad[0][1]}")
    names = ", ".join(str(p) for p, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
    warnings.warn(f"skipped {len(bad)} of {total} files that are not readable images: {names}", stacklevel=4)


def decode_folder(files: Sequence[Path], size: int, channels: int, num_workers: int) -> Tensor:
    """Decode every file once into uint8 (N, C, S, S), leaving out (with one warning) those that
    cannot be read."""
    good: list[Tensor] = []
    bad: list[tuple[Path, str]] = []
    for images, errors in readable_batches(files, size, channels, num_workers):
        good += images
        bad += errors
    warn_unreadable(bad, len(files))
    return torch.stack(good)


# --------------------------------------------------------------------------------------------
# the in-memory loader


class TensorLoader:
    """Batches of one in-memory uint8 tensor (N, C, S, S), drawn by index.

    Each epoch draws one permutation from ``(seed, epoch)``, so runs are reproducible and a
    resumed run sees the same order as an uninterrupted one. With ``world_size > 1`` every rank
    uses the same permutation and takes every ``world_size``-th index: shards are disjoint.
    Incomplete last batches are dropped (BatchNorm statistics of a tiny batch hurt GANs).
    ``resume_at=(epoch, batches)``: that epoch starts after its first ``batches`` batches.
    """

    def __init__(
        self,
        images: Tensor,
        batch_size: int,
        *,
        seed: int = 0,
        epoch_fn: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        resume_at: tuple[int, int] | None = None,
    ) -> None:
        self.images = images
        self.batch_size = batch_size
        self.seed = seed
        self.epoch_fn = epoch_fn
        self.rank = rank
        self.world_size = world_size
        self.resume_at = resume_at
        self._epochs_started = 0

    def __len__(self) -> int:
        return (len(self.images) // self.world_size) // self.batch_size

    def __iter__(self) -> Iterator[Tensor]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._epochs_started
        self._epochs_started += 1
        n = len(self.images)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        per_rank = n // self.world_size
        order = order[: per_rank * self.world_size][self.rank :: self.world_size]
        order = order.to(self.images.device, non_blocking=True)
        b = self.batch_size
        start = 0
        if self.resume_at is not None and self.resume_at[0] == epoch and 0 < self.resume_at[1] < len(self):
            start = self.resume_at[1]  # a run stopped mid-epoch: skip the batches it trained on
        self.resume_at = None
        for i in range(start, len(self)):
            yield self.images.index_select(0, order[i * b : (i + 1) * b])


# --------------------------------------------------------------------------------------------
# the LightningDataModule


class ImageDataModule(L.LightningDataModule):
    """MNIST, Fashion-MNIST or a folder of images, as uint8 batches (B, C, S, S).

    Args:
        name: ``mnist``, ``fashion_mnist`` or ``folder``.
        root: data root for MNIST/Fashion-MNIST (torchvision layout ``<root>/MNIST/raw``).
        path: the image folder, for ``name="folder"``.
        image_size: side S of the square images the model sees.
        channels: 1 (grayscale) or 3 (RGB).
        batch_size: images per batch on each device.
        split: ``train`` or ``test`` (MNIST/Fashion-MNIST; a folder is one split).
        download: let torchvision download missing MNIST/Fashion-MNIST files.
        in_memory: ``"auto"`` (hold the data if it needs at most ``memory_limit_mb``),
            ``True`` or ``False`` (stream through DataLoader workers).
        memory_limit_mb: size limit of the ``"auto"`` choice.
        on_device: ``"auto"`` (hold in-memory data on the GPU when training on one), True, False.
        num_workers: DataLoader workers for streaming and for decoding a folder once.
        seed: shuffling seed; ``None`` draws one.
    """

    def __init__(
        self,
        *,
        name: str,
        image_size: int,
        channels: int,
        batch_size: int,
        root: str | None = None,
        path: str | None = None,
        split: str = "train",
        download: bool = True,
        in_memory: bool | str = "auto",
        memory_limit_mb: int = 4096,
        on_device: bool | str = "auto",
        num_workers: int = 2,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        if name not in DATASETS:
            raise UserInputError(f"dataset.name={name!r} is not known; choose one of {', '.join(DATASETS)}")
        if channels not in (1, 3):
            raise UserInputError(f"dataset.channels={channels} must be 1 (grayscale) or 3 (RGB)")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise UserInputError(f"dataset.batch_size={batch_size!r} must be a positive integer")
        if split not in SPLITS:
            raise UserInputError(f"dataset.split={split!r} must be one of {', '.join(SPLITS)}")
        if in_memory not in ("auto", True, False):
            raise UserInputError(f"dataset.in_memory={in_memory!r} must be auto, true or false")
        if on_device not in ("auto", True, False):
            raise UserInputError(f"dataset.on_device={on_device!r} must be auto, true or false")
        if name == "folder" and not path:
            raise UserInputError("dataset=folder needs dataset.path=<folder of images>")
        if name != "folder" and not root:
            raise UserInputError(f"dataset={name} needs dataset.root (or DCGAN_DATA_DIR)")
        if name != "folder" and in_memory is False:
            n = MNIST_SPLIT_SIZES[split]
            mb = n * channels * image_size**2 / 2**20
            raise UserInputError(
                f"dataset.in_memory=false streams image folders only; {name} is always held in memory "
                f"({n:,} images of {channels}x{image_size}x{image_size} take {mb:.0f} MB as uint8). "
                "Use dataset.in_memory=auto"
            )
        self.save_hyperparameters(logger=False)
        self.name = name
        self.root = root
        self.path = path
        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.split: DataSplit = split  # type: ignore[assignment]
        self.download = download
        self.in_memory = in_memory
        self.memory_limit_mb = memory_limit_mb
        self.on_device = on_device
        self.num_workers = num_workers
        self.seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        self.images: Tensor | None = None  # in-memory path: uint8 (N, C, S, S)
        self.dataset: ImageFolderDataset | None = None  # streaming path
        self._resume_at: tuple[int, int] | None = None

    # -- loading ---------------------------------------------------------------------------

    def prepare_data(self) -> None:
        # Runs on one process per machine: the place to download.
        if self.name != "folder":
            ensure_mnist_files(self.name, self.root, self.split, self.download)  # type: ignore[arg-type]

    def setup(self, stage: str | None = None) -> None:
        if self.images is not None or self.dataset is not None:
            return
        if self.name == "folder":
            self._setup_folder()
        else:
            images = load_mnist_images(self.name, self.root, self.split, download=False)  # type: ignore[arg-type]
            if self.channels == 3:
                images = images.expand(-1, 3, -1, -1)
            self.images = resize_uint8(images, self.image_size).contiguous()
        self._check_batch_size()
        if self.images is not None and self._wants_device():
            self.images = self.images.to(self.trainer.strategy.root_device)  # type: ignore[union-attr]
        log.info("%s", self.describe())

    def _setup_folder(self) -> None:
        files = find_images(self.path)  # type: ignore[arg-type]
        nbytes = len(files) * self.channels * self.image_size**2
        in_memory = self.in_memory if self.in_memory != "auto" else nbytes <= self.memory_limit_mb * 2**20
        if not in_memory:
            self.dataset = ImageFolderDataset(files, self.image_size, self.channels, stand_in=True)
            return
        self.images = decode_folder(files, self.image_size, self.channels, self.num_workers)

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

    # -- properties ------------------------------------------------------------------------

    @property
    def source(self) -> str:
        return str(self.path) if self.name == "folder" else f"{self.name} ({self.split})"

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        if self.dataset is not None:
            return len(self.dataset)
        raise RuntimeError("call setup() first")

    def describe(self) -> str:
        mode = "in memory" if self.images is not None else f"streamed by {self.num_workers} workers"
        where = f" on {self.images.device}" if self.images is not None else ""
        return (
            f"dataset {self.source}: {len(self)} images, {self.channels}x{self.image_size}x"
            f"{self.image_size}, {mode}{where}, batch {self.batch_size}"
        )

    # -- position in the data, for checkpoints ------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The shuffling seed and how far into its epoch training got: a run stopped mid-epoch
        and resumed sees the rest of that epoch's batches in the same order (in-memory data;
        streamed data restarts the epoch with a new order, for the batches left)."""
        if self.trainer is None:
            return {"seed": self.seed}
        progress = loop.batches_into_epoch(self.trainer)
        if progress >= self.trainer.num_training_batches:
            # Saved at an epoch's end (SIGTERM is acted on after the epoch count moved on, with
            # the batch count not yet reset): the next epoch starts from its first batch.
            progress = 0
        return {"seed": self.seed, "epoch": self.trainer.current_epoch, "batches": progress}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict.get("seed", self.seed))
        if "epoch" in state_dict:
            self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))

    # -- loaders ---------------------------------------------------------------------------

    def train_dataloader(self) -> TensorLoader | DataLoader[Tensor]:
        if self.images is not None:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
            epoch_fn = (lambda: self.trainer.current_epoch) if self.trainer is not None else None
            return TensorLoader(
                self.images,
                self.batch_size,
                seed=self.seed,
                epoch_fn=epoch_fn,
                rank=rank,
                world_size=world,
                resume_at=self._resume_at,
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

    def on_after_batch_transfer(self, batch: Tensor, dataloader_idx: int) -> Tensor:
        return to_unit_range(batch)
