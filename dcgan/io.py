"""File writing that never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor
from torchvision.utils import make_grid, save_image


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block
    finishes. A crash or Ctrl-C mid-write leaves the previous ``path`` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def image_grid(images: Tensor, nrow: int) -> Tensor:
    """Images (N, C, S, S) in [-1, 1] -> one grid (C, H, W) in [0, 1], 2 px padding."""
    return make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))


def save_grid(images: Tensor, path: str | Path, nrow: int) -> Path:
    """Save images (N, C, S, S) in [-1, 1] as one PNG grid, atomically."""
    with atomic_path(path) as tmp:
        save_image(image_grid(images, nrow), tmp, format="png")
    return Path(path)
