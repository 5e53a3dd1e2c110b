"""MNIST and Fashion-MNIST, read from torchvision's layout (``<root>/MNIST/raw``,
``<root>/FashionMNIST/raw``): IDX files, gzipped or not, checked against torchvision's md5 sums,
downloaded through torchvision where allowed."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
from pathlib import Path
from typing import Any, Literal
from urllib.error import URLError

import numpy as np
import torch
from torch import Tensor

from dcgan.datasets.module import ImageDataModule, InMemory
from dcgan.errors import UserInputError, choice
from dcgan.images import resize_uint8

NAMES: tuple[str, ...] = ("mnist", "fashion_mnist")
SPLITS: tuple[str, ...] = ("train", "test")
# Images per split of MNIST and Fashion-MNIST.
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}
DataSplit = Literal["train", "test"]
Kind = Literal["images", "labels"]
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


def _torchvision_class(name: str) -> type:
    from torchvision.datasets import MNIST, FashionMNIST

    return {"mnist": MNIST, "fashion_mnist": FashionMNIST}[name]


def _idx_filename(split: DataSplit, kind: Kind) -> str:
    return f"{'train' if split == 'train' else 't10k'}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"


def mnist_raw_dir(name: str, root: str | Path) -> Path:
    """``<root>/MNIST/raw`` or ``<root>/FashionMNIST/raw``: where torchvision keeps the files."""
    return Path(root).expanduser() / _torchvision_class(name).__name__ / "raw"  # as torchvision expands it


def _find_idx_file(name: str, root: str | Path, split: DataSplit, kind: Kind) -> Path | None:
    raw = mnist_raw_dir(name, root)
    base = _idx_filename(split, kind)
    for candidate in (raw / f"{base}.gz", raw / base):
        if candidate.is_file():
            return candidate
    return None


def _expected_md5(name: str, filename: str) -> str | None:
    for resource, md5 in _torchvision_class(name).resources:
        if resource == filename:
            return md5
    return None


def read_idx(path: Path, kind: Kind, expected_md5: str | None = None) -> Tensor:
    """Parse an IDX file (gzipped or not): images as uint8 (N, 1, H, W), labels as int64 (N,)."""
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
    header = 16 if kind == "images" else 8
    if len(raw) < header or int.from_bytes(raw[:4], "big") != _MAGIC[kind]:
        raise UserInputError(f"{path} is not an IDX {kind} file (wrong magic number); replace it")
    dims = [int.from_bytes(raw[i : i + 4], "big") for i in range(4, header, 4)]
    if len(raw) != header + int(np.prod(dims)):
        raise UserInputError(f"{path} is truncated: header says {' x '.join(map(str, dims))} bytes")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).copy()
    if kind == "labels":
        return torch.from_numpy(array).long()
    return torch.from_numpy(array.reshape(dims[0], 1, dims[1], dims[2]))


def ensure_mnist_files(name: str, root: str | Path, split: DataSplit, download: bool) -> dict[Kind, Path]:
    """The IDX image and label files of ``split``, downloaded through torchvision if allowed.

    Raises ``UserInputError`` saying where the files are expected when they are missing and
    cannot be downloaded."""
    kinds: tuple[Kind, ...] = ("images", "labels")
    found = {kind: _find_idx_file(name, root, split, kind) for kind in kinds}
    if all(found.values()):
        return found  # type: ignore[return-value]
    raw = mnist_raw_dir(name, root)
    reason = "downloading is off (dataset.download=false)"
    if download:
        created = [d for d in (raw, raw.parent, raw.parent.parent) if not d.exists()]  # innermost first
        try:
            _torchvision_class(name)(str(root), train=split == "train", download=True)
        except (RuntimeError, URLError, OSError) as e:
            first_line = str(e).strip().splitlines()
            reason = "the download failed" + (f" ({first_line[-1]})" if first_line else "")
            for folder in created:  # torchvision makes <root>/<Name>/raw first: leave no empty ones
                with contextlib.suppress(OSError):
                    folder.rmdir()
        else:
            reason = f"torchvision's download did not leave it in {raw}"
        found = {kind: _find_idx_file(name, root, split, kind) for kind in kinds}
        if all(found.values()):
            return found  # type: ignore[return-value]
    base = _idx_filename(split, next(kind for kind in kinds if found[kind] is None))
    raise UserInputError(
        f"{name} {split} {base.split('-')[1]} not found: expected {raw / base}.gz (or unpacked {base}), and "
        f"{reason}. Point dataset.root or the DCGAN_DATA_DIR environment variable at the folder "
        f"that holds {raw.parent.name}/raw/ (e.g. DCGAN_DATA_DIR=/path/to/data make train), or "
        f"run once with internet access so torchvision can download the files there."
    )


def load_mnist(name: str, root: str | Path, split: DataSplit, download: bool) -> tuple[Tensor, Tensor]:
    """MNIST or Fashion-MNIST ``split``: images uint8 (N, 1, 28, 28) and labels int64 (N,)."""
    files = ensure_mnist_files(name, root, split, download)
    images, labels = (
        read_idx(path, kind, _expected_md5(name, path.name) if path.suffix == ".gz" else None)
        for kind, path in files.items()
    )
    if len(images) != len(labels):
        raise UserInputError(f"{files['images']} holds {len(images)} images but {files['labels']} {len(labels)} labels")
    return images, labels


class MNISTData(ImageDataModule):
    """MNIST or Fashion-MNIST, held in memory, with their 10 classes.

    Args (besides ``ImageDataModule``'s):
        name: ``mnist`` or ``fashion_mnist``.
        root: the data root (torchvision layout ``<root>/MNIST/raw``).
        split: ``train`` or ``test``.
        download: let torchvision download missing files.
    """

    def __init__(self, *, name: str, root: str, split: str, download: bool, **settings: Any) -> None:
        super().__init__(**settings)
        choice(name, "dataset.name", NAMES)
        choice(split, "dataset.split", SPLITS)
        if not root:
            raise UserInputError(f"dataset={name} needs dataset.root (or DCGAN_DATA_DIR)")
        if self.in_memory is False:
            n = SPLIT_SIZES[split]
            mb = n * self.channels * self.image_size**2 / 2**20
            raise UserInputError(
                f"dataset.in_memory=false streams image folders only; {name} is always held in memory "
                f"({n:,} images of {self.channels}x{self.image_size}x{self.image_size} take {mb:.0f} MB as uint8). "
                "Use dataset.in_memory=auto"
            )
        self.name, self.root, self.split, self.download = name, root, split, download
        self.class_names = CLASS_NAMES[name]

    @property
    def source(self) -> str:
        return f"{self.name} ({self.split})"

    def prepare_data(self) -> None:
        # Runs on one process per machine: the place to download.
        ensure_mnist_files(self.name, self.root, self.split, self.download)  # type: ignore[arg-type]

    def load(self) -> InMemory:
        images, labels = load_mnist(self.name, self.root, self.split, download=False)  # type: ignore[arg-type]
        if self.channels == 3:
            images = images.expand(-1, 3, -1, -1)
        return InMemory(resize_uint8(images, self.image_size).contiguous(), labels)

    def reference(self, split: str) -> MNISTData:
        choice(split, "reference_split", SPLITS)
        return self.copy(split=split, on_device=False)

    def reference_id(self) -> tuple[str, str]:
        return self.split, ""

    def num_images(self) -> int:
        return SPLIT_SIZES[self.split]
