"""DCGAN generator and discriminator, derived from the image size (pure torch.nn).

Both networks are a stack of stride-2 stages between a small "start" grid and the image:
28 px images start from 7x7 (two stages: 7 -> 14 -> 28), powers of two from 4x4
(64 px: four stages, 128 px: five), or from the side ``start_grid`` asks for (64 px from 8x8:
three stages). Widths double towards the small end, capped at
``max_width``, as in the DCGAN paper (Radford et al. 2015) and pytorch/examples.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dcgan.errors import choice, integer, require

SUPPORTED_IMAGE_SIZES: tuple[int, ...] = (28, 64, 128)
GeneratorStem = Literal["conv", "dense"]
GENERATOR_STEMS: tuple[str, ...] = ("conv", "dense")
# G's 2x upsampling: ConvTranspose(4, stride 2) (DCGAN), or a resize then a 3x3 conv (Odena et
# al. 2016), which cannot draw ConvTranspose's checkerboard of uneven overlaps: nearest-neighbour
# (``resize``), or bilinear, whose output has no 2x2 blocks for the conv to smooth away (on
# fashion64 at width 16 it trailed resize by far over 12 epochs: docs/quality.md).
G_UPSAMPLINGS: tuple[str, ...] = ("transpose", "resize", "bilinear")
# D's normalisation: BatchNorm after each conv but the first (DCGAN), spectral normalisation
# of every conv's weight (Miyato et al. 2018; no BatchNorm), or none.
D_NORMS: tuple[str, ...] = ("batch", "spectral", "none")


def check_image_size(image_size: object, key: str) -> None:
    """Raise ``UserInputError`` naming ``key`` unless ``image_size`` is a supported size."""
    sizes = ", ".join(map(str, SUPPORTED_IMAGE_SIZES))
    require(image_size in SUPPORTED_IMAGE_SIZES, key, image_size, f"is not supported; supported sizes are {sizes}")


def stage_layout(image_size: int, start: int | None = None) -> tuple[int, int]:
    """Return ``(start, stages)``: the start grid side and the number of 2x stages.

    ``start`` None derives it from the size: 7 for 28 px, 4 for powers of two. Another side
    must leave at least one stage: ``image_size / start`` a power of two >= 2 (64 px from 8x8:
    three stages instead of four). Raises ``UserInputError`` for sizes outside
    ``SUPPORTED_IMAGE_SIZES`` and for such a ``start``.
    """
    check_image_size(image_size, "model.image_size")
    if start is None:
        start = 7 if image_size % 7 == 0 else 4
    # The sides that leave whole 2x stages: the size halved once or more, while it halves evenly.
    sides = [image_size >> k for k in range(1, image_size.bit_length()) if (image_size >> k) << k == image_size]
    integer(start, "model.start_grid")
    fits = f"does not fit {image_size} px images; use null or one of {', '.join(map(str, sides))}"
    require(start in sides, "model.start_grid", start, fits)
    return start, int(math.log2(image_size // start))


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv, linear and embedding weights ~ N(0, 0.02), BatchNorm scale
    ~ N(1, 0.02) (a conditional BatchNorm's per-class scales too).

    The projection discriminator's class embedding needs it as much as the convs: torch's
    default N(0, 1) made the class term of D's logit ~270x its unconditional head at init (28 px,
    BatchNorm D), logits of +-200, and the conditional run trailed the unconditional one.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    for m in module.modules():  # after the loop above, which set their embeddings to N(0, 0.02)
        if isinstance(m, ConditionalBatchNorm):
            nn.init.normal_(m.scale.weight, 1.0, 0.02)
            nn.init.zeros_(m.shift.weight)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose scale and shift are looked up per class (de Vries et al. 2017; Miyato &
    Koyama 2018's generator): the class steers every stage of G, not only its input."""

    def __init__(self, features: int, num_classes: int, dims: int = 2) -> None:
        super().__init__()
        self.norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(features, affine=False)
        self.scale = nn.Embedding(num_classes, features)
        self.shift = nn.Embedding(num_classes, features)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """``labels``: class indices (N,), or weights over the classes (N, classes), which mix
        the classes' scales and shifts (a path from one class to another)."""
        shape = (x.shape[0], -1) + (1,) * (x.dim() - 2)
        if labels.is_floating_point():
            scale, shift = labels @ self.scale.weight, labels @ self.shift.weight
        else:
            scale, shift = self.scale(labels), self.shift(labels)
        return self.norm(x) * scale.view(shape) + shift.view(shape)


class MinibatchStd(nn.Module):
    """Appends one feature map to D's start grid: how much the images of a group differ (the
    std of each feature across a group of ``group`` images, averaged over features and
    positions; Karras et al. 2018, ProGAN section 3; StyleGAN2's group of 4). A G that draws
    few variations gives batches whose spread is unlike the real ones', which D then sees.

    Images ``i`` and ``j`` share a group when ``i % (N / g) == j % (N / g)``, ``g`` the largest
    divisor of the batch size N that divides ``group`` (a last batch of odd size: groups of 1,
    whose spread is 0). Real and fake images must come in separate batches, as D sees them here.
    """

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        g = math.gcd(n, self.group)
        # float32: under bfloat16 autocast the difference of nearly equal features loses its digits.
        y = x.float().reshape(g, n // g, *x.shape[1:])
        spread = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (N / g,)
        return torch.cat([x, spread.to(x.dtype).view(-1, 1, 1, 1).repeat(g, 1, h, w)], dim=1)


class _Stages(nn.Sequential):
    """A Sequential that hands the class labels to the layers that take them."""

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, labels) if isinstance(layer, ConditionalBatchNorm) else layer(x)
        return x


class Generator(nn.Module):
    """Maps latents (N, latent_dim) to images (N, channels, S, S) in [-1, 1].

    ``stem="conv"``: ConvTranspose from a 1x1 latent to the start grid (pytorch/examples).
    ``stem="dense"``: Linear -> reshape to the start grid (TensorFlow DCGAN tutorial).
    Then each stage is ConvTranspose(4, stride 2) (``upsample="resize"``: nearest 2x, then
    Conv(3); ``"bilinear"``: bilinear 2x, then Conv(3)) + BatchNorm + ReLU; the last stage
    outputs the image channels through Tanh.
    ``num_classes`` > 0: every BatchNorm is a ``ConditionalBatchNorm`` and ``forward`` takes the
    labels. ``spectral``: spectral norm on every layer's weight as well (Zhang et al. 2019,
    SAGAN), BatchNorm kept. ``fc_width`` > 0: a hidden fully connected layer (+ BatchNorm + ReLU)
    of that width maps z before the stem. ``skips``: StyleGAN2's skip generator (Karras et al.
    2020, fig. 7b): the start grid and every stage's output also draw an image (a 1x1 conv), and
    these are enlarged (bilinear) and summed into the last stage's output before the Tanh, so
    the coarse grids set the picture's layout and tone directly and the fine stages add detail.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int,
        width: int,
        max_width: int,
        stem: GeneratorStem = "conv",
        num_classes: int = 0,
        spectral: bool = False,
        fc_width: int = 0,
        upsample: str = "transpose",
        start_grid: int | None = None,
        skips: bool = False,
    ) -> None:
        super().__init__()
        start, stages = stage_layout(image_size, start_grid)
        choice(upsample, "model.g_upsample", G_UPSAMPLINGS)
        for name, value in (("latent_dim", latent_dim), ("g_width", width), ("max_width", max_width)):
            integer(value, f"model.{name}")
        integer(fc_width, "model.fc_width", minimum=0)
        choice(stem, "model.g_stem", GENERATOR_STEMS)
        self.latent_dim = latent_dim
        self.stem_kind = stem
        self.num_classes = num_classes

        def norm(features: int, dims: int = 2) -> nn.Module:
            if num_classes > 0:
                return ConditionalBatchNorm(features, num_classes, dims)
            return nn.BatchNorm2d(features) if dims == 2 else nn.BatchNorm1d(features)

        # Width at the input of stage i: width * 2**(stages - 1 - i), so the last stage
        # before the image has `width` channels and the start grid the most.
        widths = [min(width * 2 ** (stages - 1 - i), max_width) for i in range(stages)]
        c0 = widths[0]
        self.start = start
        # An optional hidden layer between z and the stem (InfoGAN's and Lucic et al. 2018's
        # MNIST generator: FC 1024): capacity that costs little compute at 28 px.
        self.fc: _Stages | None = None
        if fc_width > 0:
            self.fc = _Stages(
                nn.Linear(latent_dim, fc_width, bias=False), norm(fc_width, dims=1), nn.ReLU(inplace=True)
            )
        stem_in = fc_width or latent_dim
        if stem == "conv":
            self.stem = _Stages(
                nn.ConvTranspose2d(stem_in, c0, kernel_size=start, stride=1, padding=0, bias=False),
                norm(c0),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = _Stages(
                nn.Linear(stem_in, c0 * start * start, bias=False),
                norm(c0 * start * start, dims=1),
                nn.ReLU(inplace=True),
                nn.Unflatten(1, (c0, start, start)),
            )

        def up(in_ch: int, out_ch: int) -> list[nn.Module]:
            if upsample == "transpose":
                return [nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False)]
            mode = "nearest" if upsample == "resize" else "bilinear"
            return [nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)]

        blocks: list[nn.Module] = []
        for i in range(stages - 1):
            blocks += [*up(widths[i], widths[i + 1]), norm(widths[i + 1]), nn.ReLU(inplace=True)]
        blocks += [*up(widths[-1], channels), nn.Tanh()]
        self.blocks = _Stages(*blocks)
        # Skips: every grid also draws an image (a 1x1 conv), enlarged and summed into the output.
        self.to_image: nn.ModuleList | None = None
        if skips:
            self.to_image = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in widths)
        init_dcgan_weights(self)
        if spectral:
            _spectral_norm(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """(N, latent_dim) and, for a conditional G, class labels (N,) (or class weights (N, classes),
        see ``ConditionalBatchNorm``) -> (N, C, S, S) in [-1, 1]."""
        _check_labels(labels, self.num_classes, "G")
        if self.fc is not None:
            z = self.fc(z, labels)
        if self.stem_kind == "conv":
            z = z.view(z.shape[0], -1, 1, 1)
        x = self.stem(z, labels)
        if self.to_image is None:
            return self.blocks(x, labels)
        image, drawn = self.to_image[0](x), 1
        for layer in self.blocks:
            if isinstance(layer, nn.Tanh):  # the last stage's output: the finest grid's term
                x = x + _enlarge(image)
            x = layer(x, labels) if isinstance(layer, ConditionalBatchNorm) else layer(x)
            if isinstance(layer, nn.ReLU):  # the end of a stage: its grid's image joins the sum
                image, drawn = _enlarge(image) + self.to_image[drawn](x), drawn + 1
        return x


class Discriminator(nn.Module):
    """Maps images (N, channels, S, S) in [-1, 1] to real/fake logits (N,).

    Each stage is Conv(4, stride 2) + BatchNorm + LeakyReLU(0.2) (no BatchNorm on the first,
    as in the paper) + optional Dropout; a final Conv with the start grid's kernel size
    reduces the start grid to one logit. No Sigmoid: losses take logits (autocast-safe).
    ``norm="spectral"`` drops the BatchNorms and divides every conv's weight by its largest
    singular value (one power iteration per training forward), bounding D's Lipschitz
    constant; ``norm="none"`` drops them (WGAN-GP's penalty is per image, BatchNorm mixes
    the images of a batch). ``num_classes`` > 0: a projection discriminator (Miyato & Koyama
    2018): the logit gains the inner product of a class embedding with D's features summed
    over the start grid (or its hidden FC layer's), and ``forward`` takes the labels.
    ``fc_width`` > 0: the start grid is flattened into a hidden fully connected layer of that
    width, then the logit (InfoGAN's MNIST discriminator). ``minibatch_std`` > 0: the start grid
    gains a ``MinibatchStd`` feature map over groups of that many images before the head.
    ``skips``: StyleGAN2's input skips (Karras et al. 2020, fig. 7b): every stage after the
    first also reads the image shrunk to its grid (box filter, then a 1x1 conv + LeakyReLU),
    added to its features, so the coarse stages see the picture's layout and tone directly.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        width: int,
        max_width: int,
        dropout: float = 0.0,
        norm: str = "batch",
        num_classes: int = 0,
        fc_width: int = 0,
        minibatch_std: int = 0,
        start_grid: int | None = None,
        skips: bool = False,
    ) -> None:
        super().__init__()
        start, stages = stage_layout(image_size, start_grid)
        for name, value in (("d_width", width), ("max_width", max_width)):
            integer(value, f"model.{name}")
        integer(fc_width, "model.fc_width", minimum=0)
        integer(minibatch_std, "model.d_minibatch_std", minimum=0)
        require(0.0 <= dropout < 1.0, "model.d_dropout", dropout, "must be in [0, 1)")
        choice(norm, "model.d_norm", D_NORMS)
        widths = [min(width * 2**i, max_width) for i in range(stages)]

        def activation(batch_norm: nn.Module | None) -> list[nn.Module]:
            """What follows each conv (and the FC layer): [BatchNorm], LeakyReLU, [Dropout]."""
            dropped = [nn.Dropout(dropout)] if dropout > 0 else []
            return [
                *([batch_norm] if batch_norm is not None and norm == "batch" else []),
                nn.LeakyReLU(0.2, True),
                *dropped,
            ]

        layers: list[nn.Module] = []
        in_ch = channels
        # Skips: the index in ``net`` of each stage's last layer after the first, where that
        # stage's grid gets the image shrunk to it (a 1x1 conv reads it).
        self._skip_after: list[int] = []
        for i, out_ch in enumerate(widths):
            layers += [
                nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False),
                *activation(nn.BatchNorm2d(out_ch) if i else None),
            ]
            in_ch = out_ch
            if skips and i > 0:
                self._skip_after.append(len(layers) - 1)
        self.from_image: nn.ModuleList | None = None
        if skips:
            self.from_image = nn.ModuleList(
                nn.Sequential(nn.Conv2d(channels, c, 1), nn.LeakyReLU(0.2)) for c in widths[1:]
            )
        if minibatch_std > 0:
            layers.append(MinibatchStd(minibatch_std))
            in_ch += 1
        if fc_width > 0:
            # InfoGAN's and Lucic et al. 2018's MNIST discriminator: FC 1024 before the logit.
            layers += [nn.Flatten(), nn.Linear(in_ch * start * start, fc_width, bias=False)]
            layers += [*activation(nn.BatchNorm1d(fc_width)), nn.Linear(fc_width, 1, bias=False)]
            in_ch = fc_width
        else:
            layers.append(nn.Conv2d(in_ch, 1, kernel_size=start, stride=1, padding=0, bias=False))
        self.net = nn.Sequential(*layers)
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, in_ch) if num_classes > 0 else None
        init_dcgan_weights(self)
        if norm == "spectral":
            _spectral_norm(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """(N, C, S, S) in [-1, 1] and, for a conditional D, class labels (N,) -> (N,) logits."""
        _check_labels(labels, self.num_classes, "D")
        if self.embed is None and self.from_image is None:
            return self.net(x).flatten()
        *body, head = self.net
        image = x
        for i, layer in enumerate(body):
            x = layer(x)
            if self.from_image is not None and i in self._skip_after:
                j = self._skip_after.index(i)  # from_image[j] feeds stage j + 1, on a grid 2**(j + 2) times smaller
                x = x + self.from_image[j](F.avg_pool2d(image, 2 ** (j + 2)))
        if self.embed is None:
            return head(x).flatten()
        features = x.sum(dim=(2, 3)) if x.dim() == 4 else x
        projection = (self.embed(labels) * features).sum(dim=1)
        return head(x).flatten() + projection


def _enlarge(image: Tensor) -> Tensor:
    """2x bilinear enlargement of a skip generator's partial image."""
    return F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)


def _spectral_norm(net: nn.Module) -> None:
    """Spectral normalisation of every conv, linear and embedding weight of ``net``."""
    for layer in list(net.modules()):
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding) and not (
            isinstance(layer, nn.Embedding) and _in_conditional_norm(net, layer)
        ):
            nn.utils.parametrizations.spectral_norm(layer)


def _in_conditional_norm(net: nn.Module, layer: nn.Module) -> bool:
    return any(layer is m.scale or layer is m.shift for m in net.modules() if isinstance(m, ConditionalBatchNorm))


def _check_labels(labels: Tensor | None, num_classes: int, net: str) -> None:
    if num_classes == 0 and labels is not None:
        raise ValueError(f"this {net} is unconditional and takes no labels")
    if num_classes > 0 and labels is None:
        raise ValueError(f"this {net} is class-conditional: pass labels (N,) in [0, {num_classes})")
