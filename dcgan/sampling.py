"""Latents and images from a trained generator: loading, seeded latents, interpolation paths.

Pure tensor functions; writing files is ``dcgan.generate``'s job.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import torch
from torch import Tensor

from dcgan.errors import UserInputError, choice, require
from dcgan.images import to_uint8
from dcgan.module import DCGAN
from dcgan.run import Run


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:<i>``, ``mps`` or ``auto`` (a GPU if there is one), checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserInputError(f"device={device!r} is not a device; use cpu, cuda, cuda:<index>, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device={device} was asked for, but PyTorch sees no CUDA GPU; use device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserInputError(f"device={device}: there are only {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("device=mps was asked for, but MPS is not available here; use device=cpu")
    return dev


def load_generator_module(source: str | Path, device: str | torch.device = "cpu") -> DCGAN:
    """Rebuild a ``DCGAN`` from a checkpoint alone (weights only, no pickled code), in eval mode:
    a .ckpt file, or a run directory (its best.ckpt, else last.ckpt)."""
    return Run.of(source).checkpoint(source).model(device)


def _latent_seed(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"dcgan-latent/{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def latents(n: int, latent_dim: int, seed: int, start: int = 0) -> Tensor:
    """Latents ``start .. start + n - 1`` of ``seed``: (n, latent_dim) ~ N(0, I).

    Latent *i* of seed *s* comes from its own generator seeded by (s, i), so it is the same
    whatever ``n``, ``start`` or batch size asked for it: sample 7 of a 64-image grid is sample
    7 of 50,000 samples, and a seed's first latent is the endpoint an interpolation uses. Drawn
    on the CPU, so they are the same on every device.
    """
    if n < 0 or start < 0:
        raise ValueError(f"n={n} and start={start} must be >= 0")
    out = torch.empty(n, latent_dim)
    gen = torch.Generator()
    for row, index in enumerate(range(start, start + n)):
        gen.manual_seed(_latent_seed(seed, index))
        out[row] = torch.randn(latent_dim, generator=gen)
    return out


def class_labels(n: int, counts: Tensor, seed: int) -> Tensor:
    """``n`` class labels (n,) in the proportions of ``counts`` (images per class): each class
    gets its share of ``n`` rounded (largest remainders first), in an order shuffled by ``seed``.
    Stratified rather than drawn, so a conditional model's FID does not vary with the luck of
    the labels."""
    share = counts.double() / counts.sum() * n
    per_class = share.floor().long()
    rest = n - int(per_class.sum())
    per_class[torch.argsort(share - per_class, descending=True, stable=True)[:rest]] += 1
    labels = torch.repeat_interleave(torch.arange(len(counts)), per_class)
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(_latent_seed(seed, -2)))]


def class_rows(z: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Latents (C, D) -> a grid's inputs for a conditional G, one row per class and one latent
    per column: latents (classes * C, D) and labels (classes * C,)."""
    labels = torch.arange(num_classes).repeat_interleave(len(z))
    return z.repeat(num_classes, 1), labels


def generate_uint8(model: DCGAN, z: Tensor, labels: Tensor | None, batch_size: int, ema: bool) -> Tensor:
    """Latents (N, latent_dim) (and a conditional model's labels (N,)) -> uint8 images
    (N, C, S, S) on the CPU, G (or its average, if ``ema`` and the model has one) in eval mode."""
    return to_uint8(model.generate(z, labels, batch_size=batch_size, ema=ema)).cpu()


# --------------------------------------------------------------------------------------------
# paths through latent space


def lerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Straight line: (D,), (D,), (T,) -> (T, D)."""
    t = t[:, None]
    return (1 - t) * z0 + t * z1


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Great-circle interpolation (Shoemake 1985; White 2016 for GAN latents): keeps the norm
    near that of Gaussian samples, where a straight line dips through the low-density middle.
    (D,), (D,), (T,) -> (T, D); falls back to ``lerp`` for (anti)parallel endpoints."""
    cos = torch.dot(z0 / z0.norm(), z1 / z1.norm()).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if torch.sin(omega).abs() < 1e-6:
        return lerp(z0, z1, t)
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


INTERPOLATIONS = {"linear": lerp, "slerp": slerp}


def interpolation_path(points: Tensor, steps: int, method: str, closed: bool = False) -> Tensor:
    """Latents (P, D) -> (segments, steps, D): ``steps`` latents from each point to the next,
    both ends included (and back from the last to the first if ``closed``). The ends are the
    points themselves, bit for bit."""
    choice(method, "interpolate.method", tuple(INTERPOLATIONS))
    require(steps >= 2, "interpolate.steps", steps, "must be >= 2 (both ends are included)")
    ends = torch.cat([points, points[:1]]) if closed else points
    t = torch.linspace(0.0, 1.0, steps)
    rows = []
    for a, b in itertools.pairwise(ends):
        row = INTERPOLATIONS[method](a, b, t)
        row[0], row[-1] = a, b
        rows.append(row)
    return torch.stack(rows)


def vary_dimensions(z: Tensor, dims: list[int], value_range: float, steps: int) -> Tensor:
    """One latent (D,) -> (len(dims), steps, D): row *r* sets dimension ``dims[r]`` to each of
    ``steps`` values evenly spread over [-value_range, value_range], the others kept."""
    values = torch.linspace(-value_range, value_range, steps)
    out = z.repeat(len(dims), steps, 1)
    for row, dim in enumerate(dims):
        out[row, :, dim] = values
    return out


def random_walk(z: Tensor, steps: int, step_size: float, seed: int) -> Tensor:
    """A random walk of ``steps`` latents (steps, D) starting at ``z``: each step adds Gaussian
    noise of std ``step_size`` and rescales to ``z``'s norm, so the walk stays on the sphere
    where Gaussian latents live instead of drifting outwards."""
    gen = torch.Generator().manual_seed(_latent_seed(seed, -1))
    radius = z.norm()
    walk = [z]
    for _ in range(steps - 1):
        nxt = walk[-1] + step_size * torch.randn(z.shape, generator=gen)
        walk.append(nxt * (radius / nxt.norm()))
    return torch.stack(walk)
