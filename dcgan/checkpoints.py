"""Finding, reading and checking checkpoints, with errors that name the file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from dcgan.errors import UserInputError

# Hyperparameters that change the shape of a saved tensor: a checkpoint only loads into a
# model that agrees on all of them.
SHAPE_KEYS: tuple[str, ...] = (
    "image_size",
    "channels",
    "latent_dim",
    "g_width",
    "d_width",
    "max_width",
    "g_stem",
    "num_fixed_samples",
)


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


def run_dir_of(source: str | Path) -> Path:
    """The run directory of a checkpoint file (``<run>/checkpoints/x.ckpt``; a file elsewhere:
    its folder), or the folder itself."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if not path.exists():
        raise UserInputError(f"checkpoint={source} does not exist; give a run directory or a .ckpt file")
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by train.py onto the CPU, tensors and plain values only
    (``weights_only``: no pickled code runs)."""
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, KeyError, OSError) as e:
        raise UserInputError(
            f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); it may be truncated or not a .ckpt file"
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserInputError(f"{path} is not a DCGAN checkpoint written by train.py (no state_dict/hyper_parameters)")
    return ckpt


def epochs_trained(ckpt: dict[str, Any]) -> int:
    """Epochs whose training finished when ``ckpt`` was written. (``ckpt["epoch"]`` lags by one
    in checkpoints written from an epoch-end hook, like ``best.ckpt``.)"""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(ckpt.get("epoch", 0))


def check_resumable(path: str | Path, hparams: dict[str, Any], max_epochs: int | None) -> None:
    """Refuse to resume from ``path`` into a model with other tensor shapes, or when the
    checkpoint has already trained ``max_epochs`` epochs."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserInputError(
            f"ckpt_path={path} is a folder; give a .ckpt file, or continue that run with resume={path}"
        )
    if not path.is_file():
        raise UserInputError(
            f"ckpt_path={path} does not exist; give a .ckpt file (e.g. <run dir>/checkpoints/last.ckpt)"
        )
    ckpt = read_checkpoint(path)
    saved = ckpt["hyper_parameters"]
    mismatches = [
        f"model.{key}: checkpoint {saved.get(key)!r}, config {hparams.get(key)!r}"
        for key in SHAPE_KEYS
        if saved.get(key) != hparams.get(key)
    ]
    if mismatches:
        raise UserInputError(
            f"cannot resume from {path}: it was trained with other network settings ("
            + "; ".join(mismatches)
            + "). Use the experiment and overrides it was trained with (see .hydra/config.yaml in its run directory)"
        )
    epoch = epochs_trained(ckpt)
    if max_epochs is not None and max_epochs >= 0 and epoch >= max_epochs:
        raise UserInputError(
            f"{path} has already trained {epoch} epochs; set trainer.max_epochs above {epoch} to train on"
        )
