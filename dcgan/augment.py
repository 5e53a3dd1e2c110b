"""DiffAugment (Zhao et al. 2020): random, differentiable transforms of every image D sees, real
and fake alike, so that D cannot memorise the training images and G still gets gradients
through the transform. Follows the authors' reference code (github.com/mit-han-lab/data-efficient-gans).

A policy is a list of transform groups, applied in order, each drawn anew per image:
- ``color``: brightness (+U(-0.5, 0.5)), saturation (x U(0, 2), RGB only), contrast (x U(0.5, 1.5));
- ``translation``: shift by up to 1/8 of the side, zero-padded;
- ``cutout``: a square of half the side set to 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dcgan.errors import UserInputError


def brightness(x: Tensor) -> Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def saturation(x: Tensor) -> Tensor:
    if x.shape[1] == 1:  # a grey image has no saturation
        return x
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean


def contrast(x: Tensor) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    n, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    # Read from a copy padded by one zero pixel; shifts past the edge read the padding. One
    # gather over the flattened pixels: half the time of advanced indexing, whose backward
    # (index_put with accumulate) is slow on CPUs.
    gy = torch.clamp(torch.arange(h, device=x.device).view(1, h, 1) + dy + 1, 0, h + 1)
    gx = torch.clamp(torch.arange(w, device=x.device).view(1, 1, w) + dx + 1, 0, w + 1)
    index = (gy * (w + 2) + gx).view(n, 1, h * w).expand(n, c, h * w)
    return F.pad(x, [1, 1, 1, 1]).flatten(2).gather(2, index).view(n, c, h, w)


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    b, gy, gx = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(ch, device=x.device),
        torch.arange(cw, device=x.device),
        indexing="ij",
    )
    gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[b, gy, gx] = 0
    return x * mask.unsqueeze(1)


TRANSFORMS: dict[str, tuple[Callable[[Tensor], Tensor], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


class DiffAugment:
    """The transform groups of ``policy`` (e.g. ``["translation", "cutout"]``; ``[]``: none) as a
    function of a batch (N, C, S, S) -> (N, C, S, S), differentiable, drawing from the global
    RNG (so a seeded run repeats)."""

    def __init__(self, policy: Sequence[str]) -> None:
        names = list(policy) if isinstance(policy, Sequence) and not isinstance(policy, str) else None
        if names is None or any(name not in TRANSFORMS for name in names):
            raise UserInputError(
                f"model.augment={policy!r}: use a list of {', '.join(TRANSFORMS)}, e.g. "
                "model.augment=[translation,cutout] (Zhao et al.'s choice for grayscale and small data), "
                "or [] for none"
            )
        self.transforms = [t for name in names for t in TRANSFORMS[name]]

    def __call__(self, x: Tensor) -> Tensor:
        for transform in self.transforms:
            x = transform(x)
        return x
