"""Pixels: the networks' floats in [-1, 1] and the uint8 images everything else stores, and grids.

Data is held and moved as uint8 (1 byte per pixel); training sees floats in [-1, 1]; every image
written or scored goes back through ``to_uint8``, so pixels are rounded the same way everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 (..., C, S, S) in [0, 255] -> float32 in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: Tensor) -> Tensor:
    """float (..., C, S, S) in [-1, 1] -> uint8 in [0, 255], rounded (not truncated)."""
    return images.detach().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def resize_uint8(images: Tensor, size: int, chunk: int = 2048) -> Tensor:
    """Resize uint8 (N, C, H, W) to (N, C, size, size) with antialiased bilinear interpolation."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def to_pil(image: Tensor) -> Image.Image:
    """One uint8 image (C, H, W), C = 1 or 3 -> a PIL image (mode L or RGB)."""
    array = image.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def grid(images: Tensor, nrow: int) -> Image.Image:
    """uint8 images (N, C, S, S) -> one PIL image (mode L or RGB), ``nrow`` images per row,
    2 px black padding."""
    tiled = make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=0)  # (3, H, W): C = 1 is repeated
    return to_pil(tiled if images.shape[1] == 3 else tiled[:1])
