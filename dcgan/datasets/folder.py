"""Folders of images, searched recursively: decoded once into memory, or streamed from disk.

Images of any mode are converted to the run's channels, resized so the shorter side is the
image size and center-cropped. Unreadable files are left out with one warning (or, streamed,
replaced by the next readable file). A folder whose images all lie in top-level subfolders has
classes, one per subfolder (torchvision's ImageFolder convention).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dcgan.datasets.module import ImageDataModule, InMemory
from dcgan.errors import UserInputError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
NO_CLASS = -1


def find_images(root: str | Path) -> tuple[list[Path], dict[str, int]]:
    """All image files under ``root``, recursively, sorted, each file once; hidden files and
    folders skipped. Returns ``(files, skipped)``: ``skipped`` counts the other files left
    out, by reason (``not images``, ``dangling links``, ``repeats``: links to, or other paths
    of, a file already listed). Of several paths to one file, the one that is not a link is
    kept, else the first; a file linked many times must not weigh more in training and FID."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserInputError(f"dataset.path={root} does not exist; point it at a folder of images")
    if not root.is_dir():
        raise UserInputError(f"dataset.path={root} is not a folder; point it at a folder of images")
    skipped = dict.fromkeys(("not images", "dangling links", "repeats"), 0)
    by_target: dict[Path, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts) or p.is_dir():
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped["not images"] += p.is_file()
        elif p.is_symlink() and not p.exists():
            skipped["dangling links"] += 1
        elif p.is_file():
            by_target.setdefault(p.resolve(), []).append(p)
    files = sorted(next((p for p in paths if not p.is_symlink()), paths[0]) for paths in by_target.values())
    skipped["repeats"] = sum(len(paths) - 1 for paths in by_target.values())
    if not files:
        raise UserInputError(
            f"dataset.path={root} holds no images (searched recursively for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}, any case)"
        )
    return files, {reason: n for reason, n in skipped.items() if n}


def folder_classes(root: str | Path, files: Sequence[Path]) -> tuple[list[str] | None, list[int]]:
    """``(class names, label of each file)``: the top-level subfolders when every image lies in
    one, else ``(None, [-1, ...])``."""
    root = Path(root).expanduser()
    tops = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in files]
    if any(top is None for top in tops):
        return None, [NO_CLASS] * len(files)
    names = sorted(set(tops))  # type: ignore[arg-type]
    index = {name: i for i, name in enumerate(names)}
    return names, [index[top] for top in tops]  # type: ignore[index]


def folder_fingerprint(files: Sequence[Path]) -> str:
    """Changes when any file of the folder is added, removed, resized or rewritten."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


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


class ImageFolderDataset(Dataset[tuple[Tensor, int]]):
    """Image files decoded on access into ``(uint8 (C, size, size), label)``.

    An unreadable file raises ``UserInputError``; with ``stand_in=True`` (streamed training
    data, where a file found bad hours into a run must not end it) a warning names it and the
    next readable file in the list stands in, so batches keep their size.
    """

    def __init__(
        self, files: Sequence[Path], labels: Sequence[int], size: int, channels: int, stand_in: bool = False
    ) -> None:
        self.files, self.labels = list(files), list(labels)
        self.size, self.channels, self.stand_in = size, channels, stand_in

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not self.stand_in:
            return self.image(index), self.labels[index]
        for offset in range(len(self.files)):
            other = (index + offset) % len(self.files)
            try:
                return self.image(other), self.labels[other]
            except UserInputError as e:
                warnings.warn(f"skipped an unreadable image: {e}; the next readable one stands in", stacklevel=2)
        raise UserInputError(f"none of the {len(self.files)} image files could be read")

    def image(self, index: int) -> Tensor:
        path = self.files[index]
        try:
            return load_image(path, self.size, self.channels)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise UserInputError(f"cannot read image {path}: {e}") from e


class _Tolerant(Dataset[Tensor | str]):
    """The images of an ImageFolderDataset, with the error text in place of an unreadable one."""

    def __init__(self, inner: ImageFolderDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> Tensor | str:
        try:
            return self.inner.image(index)
        except UserInputError as e:
            return str(e)


def readable_batches(
    dataset: ImageFolderDataset, indices: Sequence[int], num_workers: int, batch_size: int = 64
) -> Iterator[tuple[Tensor | None, list[int], list[tuple[Path, str]]]]:
    """Decode the files at ``indices`` in order, batch by batch: the readable images (uint8
    (B, C, S, S), or None if none were), their indices, and (file, error) for the others."""
    subset = torch.utils.data.Subset(_Tolerant(dataset), list(indices))
    loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    position = 0
    for batch in loader:
        good, kept, bad = [], [], []
        for item in batch:
            index = indices[position]
            if isinstance(item, str):
                bad.append((dataset.files[index], item))
            else:
                good.append(item)
                kept.append(index)
            position += 1
        yield (torch.stack(good) if good else None), kept, bad


def warn_unreadable(bad: list[tuple[Path, str]], total: int) -> None:
    """One warning for all the files that could not be read; an error if none could."""
    if not bad:
        return
    if len(bad) == total:
        raise UserInputError(f"none of the {total} image files could be read; first error: {bad[0][1]}")
    names = ", ".join(str(p) for p, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
    warnings.warn(f"skipped {len(bad)} of {total} files that are not readable images: {names}", stacklevel=4)


class FolderData(ImageDataModule):
    """A folder of images (png, jpg, jpeg, bmp, webp; any case), searched recursively.

    Args (besides ``ImageDataModule``'s):
        path: the folder.
    """

    name = "folder"

    def __init__(self, *, path: str, **settings: Any) -> None:
        super().__init__(**settings)
        if not path:
            raise UserInputError("dataset=folder needs dataset.path=<folder of images>")
        self.path = path
        self._listing: tuple[list[Path], dict[str, int]] | None = None
        self._unreadable = 0  # files left out when decoding the folder into memory

    @property
    def source(self) -> str:
        return str(self.path)

    def classes(self) -> list[str] | None:
        if self.class_names is None:
            self.class_names = folder_classes(self.path, self._files())[0]
        return self.class_names

    def _files(self) -> list[Path]:
        """The folder's images, listed once (a conditional run asks for its classes before loading)."""
        if self._listing is None:
            self._listing = find_images(self.path)
        return self._listing[0]

    def load(self) -> InMemory | ImageFolderDataset:
        files = self._files()
        self.class_names, labels = folder_classes(self.path, files)
        dataset = ImageFolderDataset(files, labels, self.image_size, self.channels)
        if not self.holds_in_memory(len(files)):
            dataset.stand_in = True
            return dataset
        good: list[Tensor] = []
        kept: list[int] = []
        bad: list[tuple[Path, str]] = []
        for images, indices, errors in readable_batches(dataset, range(len(files)), self.num_workers):
            good += [images] if images is not None else []
            kept += indices
            bad += errors
        warn_unreadable(bad, len(files))
        self._unreadable = len(bad)
        return InMemory(torch.cat(good), torch.tensor([labels[i] for i in kept], dtype=torch.long))

    def uint8_batches(self, indices: Tensor, batch_size: int = 256) -> Iterator[Tensor]:
        if self.data is not None:
            yield from super().uint8_batches(indices, batch_size)
            return
        # Streamed: unreadable files are left out (one warning at the end), as in memory.
        assert isinstance(self.dataset, ImageFolderDataset), "call setup() first"
        bad: list[tuple[Path, str]] = []
        for images, _, errors in readable_batches(self.dataset, indices.tolist(), self.num_workers, batch_size):
            bad += errors
            if images is not None:
                yield images
        warn_unreadable(bad, len(indices))

    def describe(self) -> str:
        assert self._listing is not None
        skipped = self._listing[1] | ({"unreadable": self._unreadable} if self._unreadable else {})
        if not skipped:
            return super().describe()
        return f"{super().describe()}; files skipped: " + ", ".join(f"{n} {why}" for why, n in skipped.items())

    def reference(self, split: str) -> FolderData:
        """A folder is one split: all of its images. The copy shares this module's listing and,
        once loaded, its decoded images: FID's reference does not decode the folder again."""
        reference = self.copy(on_device=False)
        reference._listing, reference._unreadable = self._listing, self._unreadable
        if self.data is not None:
            reference.data = InMemory(self.data.images.cpu(), self.data.labels.cpu())
            reference.class_names = self.class_names
        return reference

    def reference_id(self) -> tuple[str, str]:
        return "all", folder_fingerprint(self._files())

    def num_images(self) -> int:
        return len(self._files())
