"""GAN losses on D's logits (pure functions), the gradient penalty, the instance-noise schedule.

``model.loss`` picks one (conf/loss/):
- ``ns``: non-saturating (Goodfellow et al. 2014): BCE with logits, numerically stable and
  autocast-safe; ``real_label`` / ``fake_label`` give label smoothing.
- ``hinge``: Lim & Ye 2017; Miyato et al. 2018 (with spectral normalisation).
- ``ls``: least squares (Mao et al. 2017), D's targets ``real_label`` / ``fake_label``, G's 1.
- ``wgan_gp``: Wasserstein with a gradient penalty on interpolates (Gulrajani et al. 2017).

Penalties on D's gradient, added to D's loss with any of them: ``gradient_penalty`` (WGAN-GP's)
and ``r1_penalty`` (on real images).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES: tuple[str, ...] = ("ns", "hinge", "ls", "wgan_gp")
# The losses whose D targets real_label / fake_label mean something (label smoothing).
LABELLED_LOSSES: tuple[str, ...] = ("ns", "ls")


def discriminator_loss(
    loss: str, real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0, fake_label: float = 0.0
) -> Tensor:
    """D's loss on its logits of real (N,) and fake (N,) images; lower means D tells them apart.

    ``ns``: BCE of real logits against ``real_label`` plus fake logits against ``fake_label``
    (``real_label=0.9`` is one-sided label smoothing, Salimans et al. 2016). ``ls``: half the
    mean squared distance to the same targets. ``hinge``: mean(relu(1 - real)) +
    mean(relu(1 + fake)). ``wgan_gp``: mean(fake) - mean(real), the negated critic estimate of
    the Wasserstein distance (the gradient penalty is added by the caller).
    """
    if loss == "ns":
        real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_label))
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, fake_label))
        return real + fake
    if loss == "ls":
        return 0.5 * ((real_logits - real_label) ** 2).mean() + 0.5 * ((fake_logits - fake_label) ** 2).mean()
    if loss == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if loss == "wgan_gp":
        return fake_logits.mean() - real_logits.mean()
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


def generator_loss(loss: str, fake_logits: Tensor) -> Tensor:
    """G's loss on D's logits of its images (N,).

    ``ns``: -log D(G(z)), BCE against 1 (non-saturating: steep where D rejects the fakes).
    ``ls``: half the mean squared distance to 1. ``hinge`` and ``wgan_gp``: -mean(fake).
    Label smoothing never applies here: G should aim for "real", not "90% real".
    """
    if loss == "ns":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if loss == "ls":
        return 0.5 * ((fake_logits - 1.0) ** 2).mean()
    if loss in ("hinge", "wgan_gp"):
        return -fake_logits.mean()
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


def gradient_penalty(discriminator: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP's penalty: mean((||grad_x D(x)||_2 - 1)^2) at x drawn uniformly on the segments
    between real and fake images (N, C, S, S) (Gulrajani et al. 2017), differentiable with
    respect to D's weights. Multiply by the penalty weight (10 in the paper)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    between = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(between).sum(), between, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def r1_penalty(real_logits: Tensor, real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): half the mean squared norm of D's gradient at the real images
    (N, C, S, S), which must require grad and be what ``real_logits`` (N,) were computed from.
    Differentiable with respect to D's weights; multiply by gamma."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return 0.5 * grad.flatten(1).pow(2).sum(dim=1).mean()


def instance_noise_std(initial_std: float, step: int, anneal_steps: int) -> float:
    """Std of the Gaussian instance noise added to D's inputs at ``step``: ``initial_std``
    decreasing linearly to 0 at ``anneal_steps`` (Sønderby et al. 2016), 0 afterwards."""
    if initial_std <= 0 or anneal_steps <= 0:
        return 0.0
    return initial_std * max(0.0, 1.0 - step / anneal_steps)
