"""DCGAN generator and discriminator, derived from the image size (pure torch.nn).

Both networks are a stack of stride-2 stages between a small "start" grid and the image:
28 px images start from 7x7 (two stages: 7 -> 14 -> 28), powers of two from 4x4
(64 px: four stages, 128 px: five). Widths double towards the small end, capped at
``max_width``, as in the DCGAN paper (Radford et al. 2015) and pytorch/examples.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from dcgan.errors import UserInputError, choice, integer, require

SUPPORTED_IMAGE_SIZES: tuple[int, ...] = (28, 64, 128)
GeneratorStem = Literal["conv", "dense"]
GENERATOR_STEMS: tuple[str, ...] = ("conv", "dense")
# D's normalisation: BatchNorm after each conv but the first (DCGAN), spectral normalisation
# of every conv's weight (Miyato et al. 2018; no BatchNorm), or none.
D_NORMS: tuple[str, ...] = ("batch", "spectral", "none")


def stage_layout(image_size: int) -> tuple[int, int]:
    """Return ``(start, stages)``: the start grid side and the number of 2x stages.

    Raises ``UserInputError`` for sizes outside ``SUPPORTED_IMAGE_SIZES``.
    """
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise UserInputError(
            f"model.image_size={image_size} is not supported; "
            f"supported sizes are {', '.join(map(str, SUPPORTED_IMAGE_SIZES))} (set by dataset.image_size)"
        )
    start = 7 if image_size % 7 == 0 else 4
    stages = int(math.log2(image_size // start))
    assert start * 2**stages == image_size
    return start, stages


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv/linear weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """Maps latents (N, latent_dim) to images (N, channels, S, S) in [-1, 1].

    ``stem="conv"``: ConvTranspose from a 1x1 latent to the start grid (pytorch/examples).
    ``stem="dense"``: Linear -> reshape to the start grid (TensorFlow DCGAN tutorial).
    Then each stage is ConvTranspose(4, stride 2) + BatchNorm + ReLU; the last stage
    outputs the image channels through Tanh.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int,
        width: int,
        max_width: int,
        stem: GeneratorStem = "conv",
    ) -> None:
        super().__init__()
        start, stages = stage_layout(image_size)
        for name, value in (("latent_dim", latent_dim), ("g_width", width), ("max_width", max_width)):
            integer(value, f"model.{name}")
        choice(stem, "model.g_stem", GENERATOR_STEMS)
        self.latent_dim = latent_dim
        self.stem_kind = stem
        # Width at the input of stage i: width * 2**(stages - 1 - i), so the last stage
        # before the image has `width` channels and the start grid the most.
        widths = [min(width * 2 ** (stages - 1 - i), max_width) for i in range(stages)]
        c0 = widths[0]
        self.start = start
        if stem == "conv":
            self.stem = nn.Sequential(
                nn.ConvTranspose2d(latent_dim, c0, kernel_size=start, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(c0),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Linear(latent_dim, c0 * start * start, bias=False),
                nn.BatchNorm1d(c0 * start * start),
                nn.ReLU(inplace=True),
                nn.Unflatten(1, (c0, start, start)),
            )
        blocks: list[nn.Module] = []
        for i in range(stages - 1):
            blocks += [
                nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1, bias=False),
                nn.BatchNorm2d(widths[i + 1]),
                nn.ReLU(inplace=True),
            ]
        blocks += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)
        init_dcgan_weights(self)

    def forward(self, z: Tensor) -> Tensor:
        """(N, latent_dim) -> (N, C, S, S) in [-1, 1]."""
        if self.stem_kind == "conv":
            z = z.view(z.shape[0], self.latent_dim, 1, 1)
        return self.blocks(self.stem(z))


class Discriminator(nn.Module):
    """Maps images (N, channels, S, S) in [-1, 1] to real/fake logits (N,).

    Each stage is Conv(4, stride 2) + BatchNorm + LeakyReLU(0.2) (no BatchNorm on the first,
    as in the paper) + optional Dropout; a final Conv with the start grid's kernel size
    reduces the start grid to one logit. No Sigmoid: losses take logits (autocast-safe).
    ``norm="spectral"`` drops the BatchNorms and divides every conv's weight by its largest
    singular value (one power iteration per training forward), bounding D's Lipschitz
    constant; ``norm="none"`` drops them (WGAN-GP's penalty is per image, BatchNorm mixes
    the images of a batch).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        width: int,
        max_width: int,
        dropout: float = 0.0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        start, stages = stage_layout(image_size)
        for name, value in (("d_width", width), ("max_width", max_width)):
            integer(value, f"model.{name}")
        require(0.0 <= dropout < 1.0, "model.d_dropout", dropout, "must be in [0, 1)")
        choice(norm, "model.d_norm", D_NORMS)
        widths = [min(width * 2**i, max_width) for i in range(stages)]
        layers: list[nn.Module] = []
        in_ch = channels
        for i, out_ch in enumerate(widths):
            layers.append(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False))
            if i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, 1, kernel_size=start, stride=1, padding=0, bias=False))
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)
        if norm == "spectral":
            for layer in self.net:
                if isinstance(layer, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(layer)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, S, S) in [-1, 1] -> (N,) logits."""
        return self.net(x).flatten()
