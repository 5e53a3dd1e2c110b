"""Load a trained generator from a checkpoint and draw images from it."""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from dcgan.errors import UserInputError
from dcgan.io import save_grid
from dcgan.module import DCGAN


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (then its ``checkpoints/best.ckpt`` if present,
    else ``checkpoints/last.ckpt``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                return candidate
        raise UserInputError(f"{path} is a folder without checkpoints/best.ckpt or checkpoints/last.ckpt")
    if not path.is_file():
        raise UserInputError(f"checkpoint {path} does not exist; give a .ckpt file or a run directory")
    return path


def load_generator_module(path: str | Path, device: str | torch.device = "cpu") -> DCGAN:
    """Rebuild a ``DCGAN`` from a checkpoint alone (weights only, no pickled code), in eval mode."""
    ckpt = resolve_checkpoint(path)
    try:
        model = DCGAN.load_from_checkpoint(ckpt, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, KeyError, TypeError) as e:
        raise UserInputError(
            f"{ckpt} is not a readable DCGAN checkpoint written by train.py ({type(e).__name__}: {e})"
        ) from e
    return model.eval()


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
