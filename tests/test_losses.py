from __future__ import annotations

import math

import pytest
import torch

from dcgan.losses import discriminator_loss, generator_loss, instance_noise_std


def test_discriminator_loss_is_bce_on_both_batches() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 0.3])
    expected = -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()
    assert discriminator_loss(real, fake).item() == pytest.approx(expected.item(), rel=1e-6)


def test_label_smoothing_moves_the_optimum() -> None:
    # With real_label=0.9, D's loss on real logits is minimal where sigmoid(logit) = 0.9.
    logit = torch.tensor([math.log(0.9 / 0.1)], requires_grad=True)
    discriminator_loss(logit, torch.tensor([-50.0]), real_label=0.9).backward()
    assert logit.grad is not None and abs(logit.grad.item()) < 1e-6
    # Two-sided: fake targets of 0.1 put the optimum of fake logits at sigmoid = 0.1.
    fake = torch.tensor([math.log(0.1 / 0.9)], requires_grad=True)
    discriminator_loss(torch.tensor([50.0]), fake, real_label=1.0, fake_label=0.1).backward()
    assert fake.grad is not None and abs(fake.grad.item()) < 1e-6


def test_generator_loss_is_non_saturating() -> None:
    fake = torch.tensor([-5.0, 0.0])
    assert generator_loss(fake).item() == pytest.approx(-torch.log(torch.sigmoid(fake)).mean().item(), rel=1e-6)
    # Non-saturating: large gradient when D confidently rejects the fakes.
    x = torch.tensor([-8.0], requires_grad=True)
    generator_loss(x).backward()
    assert x.grad is not None and x.grad.item() < -0.99


def test_instance_noise_anneals_linearly_to_zero() -> None:
    assert instance_noise_std(0.2, 0, 100) == pytest.approx(0.2)
    assert instance_noise_std(0.2, 50, 100) == pytest.approx(0.1)
    assert instance_noise_std(0.2, 100, 100) == 0.0
    assert instance_noise_std(0.2, 1000, 100) == 0.0
    assert instance_noise_std(0.0, 0, 100) == 0.0
