from __future__ import annotations

import math

import pytest
import torch

from dcgan.losses import discriminator_loss, generator_loss, gradient_penalty, instance_noise_std


def test_discriminator_loss_is_bce_on_both_batches() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 0.3])
    expected = -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()
    assert discriminator_loss("ns", real, fake).item() == pytest.approx(expected.item(), rel=1e-6)


def test_label_smoothing_moves_the_optimum() -> None:
    # With real_label=0.9, D's loss on real logits is minimal where sigmoid(logit) = 0.9.
    logit = torch.tensor([math.log(0.9 / 0.1)], requires_grad=True)
    discriminator_loss("ns", logit, torch.tensor([-50.0]), real_label=0.9).backward()
    assert logit.grad is not None and abs(logit.grad.item()) < 1e-6
    # Two-sided: fake targets of 0.1 put the optimum of fake logits at sigmoid = 0.1.
    fake = torch.tensor([math.log(0.1 / 0.9)], requires_grad=True)
    discriminator_loss("ns", torch.tensor([50.0]), fake, real_label=1.0, fake_label=0.1).backward()
    assert fake.grad is not None and abs(fake.grad.item()) < 1e-6


def test_generator_loss_is_non_saturating() -> None:
    fake = torch.tensor([-5.0, 0.0])
    assert generator_loss("ns", fake).item() == pytest.approx(-torch.log(torch.sigmoid(fake)).mean().item(), rel=1e-6)
    # Non-saturating: large gradient when D confidently rejects the fakes.
    x = torch.tensor([-8.0], requires_grad=True)
    generator_loss("ns", x).backward()
    assert x.grad is not None and x.grad.item() < -0.99


def test_hinge_on_known_logits() -> None:
    # D is perfect at margin 1: no loss; wrong by margin 1 on both sides: 2 + 2.
    assert discriminator_loss("hinge", torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -2.0])).item() == 0.0
    assert discriminator_loss("hinge", torch.tensor([-1.0]), torch.tensor([1.0])).item() == pytest.approx(4.0)
    # inside the margin: relu(1 - 0.5) + relu(1 - 0.5)
    assert discriminator_loss("hinge", torch.tensor([0.5]), torch.tensor([-0.5])).item() == pytest.approx(1.0)
    assert generator_loss("hinge", torch.tensor([1.0, -3.0])).item() == pytest.approx(1.0)


def test_least_squares_and_wasserstein_on_known_logits() -> None:
    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    # 0.5 * mean((real - 1)^2) + 0.5 * mean(fake^2) = 0.5 * 0.5 + 0.5 * 2
    assert discriminator_loss("ls", real, fake).item() == pytest.approx(1.25)
    # with targets 0.9 / 0.1: 0.5 * mean(0.01, 0.81) + 0.5 * mean(0.01, 3.61)
    assert discriminator_loss("ls", real, fake, 0.9, 0.1).item() == pytest.approx(0.5 * 0.41 + 0.5 * 1.81)
    assert generator_loss("ls", fake).item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)
    assert discriminator_loss("wgan_gp", real, fake).item() == pytest.approx(1.0 - 0.5)
    assert generator_loss("wgan_gp", fake).item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="unknown loss 'wgan'"):
        discriminator_loss("wgan", real, fake)


def test_gradient_penalty_of_a_linear_critic() -> None:
    """D(x) = <w, x>: its gradient is w everywhere, so the penalty is (|w| - 1)^2, and its
    gradient with respect to w is 2 (|w| - 1) w / |w|."""
    w = torch.full((1, 2, 2), 1.0, requires_grad=True)  # |w| = 2

    def critic(x: torch.Tensor) -> torch.Tensor:
        return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    penalty = gradient_penalty(critic, real, fake)
    assert penalty.item() == pytest.approx(1.0)
    penalty.backward()
    assert w.grad is not None and torch.allclose(w.grad, torch.full_like(w, 2 * (2 - 1) * 0.5))


def test_instance_noise_anneals_linearly_to_zero() -> None:
    assert instance_noise_std(0.2, 0, 100) == pytest.approx(0.2)
    assert instance_noise_std(0.2, 50, 100) == pytest.approx(0.1)
    assert instance_noise_std(0.2, 100, 100) == 0.0
    assert instance_noise_std(0.2, 1000, 100) == 0.0
    assert instance_noise_std(0.0, 0, 100) == 0.0
