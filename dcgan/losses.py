"""Non-saturating GAN losses on logits (BCE-with-logits: numerically stable, autocast-safe)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def discriminator_loss(
    real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0, fake_label: float = 0.0
) -> Tensor:
    """D's loss: BCE of real logits against ``real_label`` plus fake logits against ``fake_label``.

    ``real_label=0.9`` is one-sided label smoothing (Salimans et al. 2016); adding
    ``fake_label=0.1`` makes it two-sided.
    """
    real = F.binary_cross_entropy_with_logits(real_logits, real_logits.new_full(real_logits.shape, real_label))
    fake = F.binary_cross_entropy_with_logits(fake_logits, fake_logits.new_full(fake_logits.shape, fake_label))
    return real + fake


def generator_loss(fake_logits: Tensor) -> Tensor:
    """G's non-saturating loss: -log D(G(z)), i.e. BCE of fake logits against 1.

    Label smoothing never applies here: G should aim for "real", not "90% real".
    """
    return F.binary_cross_entropy_with_logits(fake_logits, fake_logits.new_ones(fake_logits.shape))


def instance_noise_std(initial_std: float, step: int, anneal_steps: int) -> float:
    """Std of the Gaussian instance noise added to D's inputs at ``step``: ``initial_std``
    decreasing linearly to 0 at ``anneal_steps`` (Sønderby et al. 2016), 0 afterwards."""
    if initial_std <= 0 or anneal_steps <= 0:
        return 0.0
    return initial_std * max(0.0, 1.0 - step / anneal_steps)
