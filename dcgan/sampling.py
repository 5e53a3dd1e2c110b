"""Load a trained generator from a checkpoint and draw images from it."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from dcgan.checkpoints import read_checkpoint, resolve_checkpoint
from dcgan.errors import UserInputError
from dcgan.io import save_grid
from dcgan.module import DCGAN


def load_generator_module(path: str | Path, device: str | torch.device = "cpu") -> DCGAN:
    """Rebuild a ``DCGAN`` from a checkpoint alone (weights only, no pickled code), in eval mode."""
    ckpt = resolve_checkpoint(path)
    read_checkpoint(ckpt)  # clear errors for files that are not ours
    return DCGAN.load_from_checkpoint(ckpt, map_location=device, weights_only=True).eval()


def latents(n: int, latent_dim: int, seed: int) -> Tensor:
    """``n`` latents (n, latent_dim) ~ N(0, I) from ``seed``, drawn on the CPU so they are the
    same on every device."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


def write_grid(
    checkpoint: str | Path, out: str | Path, num_images: int, seed: int, nrow: int | None, device: str
) -> Path:
    """Generate ``num_images`` images from ``seed`` and save them as one PNG grid at ``out``."""
    if num_images < 1:
        raise UserInputError(f"num_images={num_images} must be >= 1")
    model = load_generator_module(checkpoint, device)
    images = model.generate(latents(num_images, model.hparams.latent_dim, seed))
    return save_grid(images, out, nrow or math.ceil(math.sqrt(num_images)))
