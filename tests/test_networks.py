from __future__ import annotations

import pytest
import torch
from torch import nn

from dcgan.errors import UserInputError
from dcgan.networks import (
    SUPPORTED_IMAGE_SIZES,
    ConditionalBatchNorm,
    Discriminator,
    Generator,
    MinibatchStd,
    stage_layout,
)


@pytest.mark.parametrize("image_size", SUPPORTED_IMAGE_SIZES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("stem", ["conv", "dense"])
def test_generator_output_feeds_discriminator(image_size: int, channels: int, stem: str) -> None:
    g = Generator(image_size, channels, latent_dim=16, width=4, max_width=32, stem=stem)
    d = Discriminator(image_size, channels, width=4, max_width=32)
    z = torch.randn(3, 16)
    images = g(z)
    assert images.shape == (3, channels, image_size, image_size)
    assert images.min() >= -1 and images.max() <= 1  # Tanh output
    logits = d(images)
    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("image_size", "start_grid", "start", "stages"),
    [(28, None, 7, 2), (64, None, 4, 4), (128, None, 4, 5), (64, 8, 8, 3), (128, 8, 8, 4), (28, 14, 14, 1)],
)
def test_depth_follows_image_size(image_size: int, start_grid: int | None, start: int, stages: int) -> None:
    assert stage_layout(image_size, start_grid) == (start, stages)
    g = Generator(image_size, 1, latent_dim=8, width=4, max_width=64, stem="conv", start_grid=start_grid)
    d = Discriminator(image_size, 1, width=4, max_width=64, start_grid=start_grid)
    assert g(torch.randn(2, 8)).shape == (2, 1, image_size, image_size)
    assert d(torch.randn(2, 1, image_size, image_size)).shape == (2,)
    # conv stem: one ConvTranspose to the start grid, then one per 2x stage.
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in g.modules()) == stages + 1
    # one stride-2 conv per stage, plus the final start x start conv to one logit.
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == stages + 1
    assert convs[-1].kernel_size == (start, start)


@pytest.mark.parametrize(
    ("image_size", "start_grid", "sides"),
    [(64, 6, "32, 16, 8, 4, 2, 1"), (28, 4, "14, 7"), (64, 64, "32, 16, 8, 4, 2, 1")],
)
def test_a_start_grid_that_leaves_no_whole_stages_is_refused(image_size: int, start_grid: int, sides: str) -> None:
    with pytest.raises(
        UserInputError,
        match=f"model.start_grid={start_grid} does not fit {image_size} px images; use null or one of {sides}",
    ):
        Generator(image_size, 1, latent_dim=8, width=4, max_width=64, start_grid=start_grid)
    with pytest.raises(UserInputError, match="model.start_grid=True must be an integer >= 1"):
        Discriminator(image_size, 1, width=4, max_width=64, start_grid=True)  # type: ignore[arg-type]


def test_widths_double_towards_start_grid_and_respect_cap() -> None:
    g = Generator(128, 3, latent_dim=8, width=8, max_width=32, stem="conv")
    widths = [m.out_channels for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert widths == [32, 32, 32, 16, 8, 3]  # 64 and 128 capped at 32
    d = Discriminator(128, 3, width=8, max_width=32)
    widths = [m.out_channels for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [8, 16, 32, 32, 32, 1]


def test_dense_stem_projects_with_linear() -> None:
    g = Generator(28, 1, latent_dim=10, width=4, max_width=64, stem="dense")
    linear = g.stem[0]
    assert isinstance(linear, nn.Linear)
    assert linear.out_features == 8 * 7 * 7  # width 4 * 2 at the 7x7 start grid


def test_dcgan_init() -> None:
    torch.manual_seed(0)
    g = Generator(64, 3, latent_dim=100, width=64, max_width=512, stem="conv")
    conv = next(m for m in g.modules() if isinstance(m, nn.ConvTranspose2d))
    assert abs(conv.weight.std().item() - 0.02) < 0.002
    assert abs(conv.weight.mean().item()) < 0.002
    bn = next(m for m in g.modules() if isinstance(m, nn.BatchNorm2d))
    assert abs(bn.weight.mean().item() - 1.0) < 0.01
    assert torch.all(bn.bias == 0)


def test_discriminator_dropout_is_optional() -> None:
    assert not any(isinstance(m, nn.Dropout) for m in Discriminator(28, 1, 4, 16).modules())
    with_dropout = [m for m in Discriminator(28, 1, 4, 16, dropout=0.3).modules() if isinstance(m, nn.Dropout)]
    assert len(with_dropout) == 2 and with_dropout[0].p == 0.3


def test_minibatch_std_couples_each_image_to_its_group_only() -> None:
    torch.manual_seed(0)
    d = Discriminator(28, 1, width=4, max_width=16, norm="none", minibatch_std=4)  # no BatchNorm
    x = torch.randn(8, 1, 28, 28)
    before = d(x)
    x[2] = torch.randn(1, 28, 28)  # groups of 4 in a batch of 8: images 0, 2, 4, 6 and 1, 3, 5, 7
    after = d(x)
    assert not torch.allclose(before[[0, 2, 4, 6]], after[[0, 2, 4, 6]])
    assert torch.equal(before[[1, 3, 5, 7]], after[[1, 3, 5, 7]])


def test_minibatch_std_measures_the_spread_of_a_group() -> None:
    same = torch.randn(1, 3, 4, 4).repeat(4, 1, 1, 1)
    out = MinibatchStd(4)(same)
    assert out.shape == (4, 4, 4, 4)
    assert torch.equal(out[:, :3], same) and out[:, 3].max() < 1e-3  # identical images: no spread
    varied = MinibatchStd(4)(torch.randn(4, 3, 4, 4) * 2.0)
    assert 1.0 < varied[0, 3, 0, 0] < 3.0 and torch.equal(varied[:, 3], varied[0, 3].expand(4, 4, 4))
    assert MinibatchStd(4)(torch.randn(3, 3, 4, 4))[:, 3].max() < 1e-3  # a batch of 3: groups of 1


@pytest.mark.parametrize(("fc_width", "classes"), [(0, 0), (32, 0), (0, 10), (32, 10)])
def test_minibatch_std_feeds_every_head(fc_width: int, classes: int) -> None:
    d = Discriminator(
        64, 3, width=4, max_width=16, norm="spectral", num_classes=classes, fc_width=fc_width, minibatch_std=4
    )
    labels = torch.randint(0, 10, (6,)) if classes else None
    assert d(torch.randn(6, 3, 64, 64), labels).shape == (6,)
    with pytest.raises(UserInputError, match="model.d_minibatch_std=-1 must be an integer >= 0"):
        Discriminator(28, 1, width=4, max_width=16, minibatch_std=-1)


@pytest.mark.parametrize("image_size", [0, 32, 56, 256])
def test_unsupported_image_size_is_refused_with_the_supported_list(image_size: int) -> None:
    with pytest.raises(UserInputError, match=r"model.image_size=\d+ is not supported; supported sizes are 28, 64, 128"):
        Generator(image_size, 1, latent_dim=8, width=4, max_width=16)
    with pytest.raises(UserInputError, match="supported sizes are 28, 64, 128"):
        Discriminator(image_size, 1, width=4, max_width=16)


def test_bad_widths_and_stem_are_refused() -> None:
    with pytest.raises(UserInputError, match="model.latent_dim=0 must be an integer >= 1"):
        Generator(28, 1, latent_dim=0, width=4, max_width=16)
    with pytest.raises(UserInputError, match="model.g_stem='mlp' is not known; choose one of conv, dense"):
        Generator(28, 1, latent_dim=8, width=4, max_width=16, stem="mlp")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match=r"model.d_dropout=1.0 must be in \[0, 1\)"):
        Discriminator(28, 1, width=4, max_width=16, dropout=1.0)


@pytest.mark.parametrize("image_size", [28, 64])
def test_spectral_norm_bounds_every_layer_of_d(image_size: int) -> None:
    torch.manual_seed(0)
    d = Discriminator(image_size, 3, width=8, max_width=32, norm="spectral")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    x = torch.randn(4, 3, image_size, image_size)
    for _ in range(30):  # power iterations, one per training forward
        d(x)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == (2 if image_size == 28 else 4) + 1
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)
    unnormalised = Discriminator(image_size, 3, width=8, max_width=32, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in unnormalised.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in Discriminator(image_size, 3, 8, 32).modules())
    with pytest.raises(UserInputError, match="model.d_norm='layer' is not known; choose one of batch, spectral, none"):
        Discriminator(image_size, 3, 8, 32, norm="layer")


@pytest.mark.parametrize("image_size", SUPPORTED_IMAGE_SIZES)
@pytest.mark.parametrize("stem", ["conv", "dense"])
def test_a_hidden_fc_layer_maps_z_in_g_and_ends_d(image_size: int, stem: str) -> None:
    start, stages = stage_layout(image_size)
    last_width = min(4 * 2 ** (stages - 1), 16)
    g = Generator(image_size, 1, latent_dim=10, width=4, max_width=16, stem=stem, fc_width=24)
    d = Discriminator(image_size, 1, width=4, max_width=16, fc_width=24)
    fc = g.fc[0]
    assert isinstance(fc, nn.Linear) and (fc.in_features, fc.out_features) == (10, 24)
    stem_in = g.stem[0]
    assert (stem_in.in_features if stem == "dense" else stem_in.in_channels) == 24  # the stem reads the FC layer
    linears = [m for m in d.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(last_width * start * start, 24), (24, 1)]
    assert isinstance(d.net[-1], nn.Linear)  # the logit comes from the FC layer, not a start x start conv
    images = g(torch.randn(3, 10))
    assert images.shape == (3, 1, image_size, image_size)
    assert d(images).shape == (3,)
    # without it the networks are the ones every earlier checkpoint holds
    assert Generator(image_size, 1, 10, 4, 16, stem=stem).fc is None
    assert not any(isinstance(m, nn.Linear) for m in Discriminator(image_size, 1, 4, 16).modules())


def test_the_fc_layers_take_their_norms_and_classes() -> None:
    torch.manual_seed(0)
    d = Discriminator(28, 1, width=4, max_width=16, norm="spectral", num_classes=10, fc_width=24)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in d.modules())
    x, labels = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    for _ in range(30):
        d(x, labels)
    for linear in (m for m in d.net if isinstance(m, nn.Linear)):
        assert torch.linalg.matrix_norm(linear.weight.detach(), ord=2).item() == pytest.approx(1.0, abs=0.02)
    assert d.embed.embedding_dim == 24  # the projection reads the FC layer's features
    assert not torch.equal(d(x, labels), d(x, torch.tensor([4, 5, 6, 7])))
    assert any(isinstance(m, nn.BatchNorm1d) for m in Discriminator(28, 1, 4, 16, fc_width=24).modules())
    g = Generator(28, 1, latent_dim=10, width=4, max_width=16, num_classes=10, fc_width=24).eval()
    assert isinstance(g.fc[1], ConditionalBatchNorm)  # the class steers the FC layer too
    assert g(torch.randn(4, 10), torch.tensor([3, 3, 4, 4])).shape == (4, 1, 28, 28)
    with pytest.raises(UserInputError, match="model.fc_width=-1 must be an integer >= 0"):
        Generator(28, 1, latent_dim=10, width=4, max_width=16, fc_width=-1)
    with pytest.raises(UserInputError, match="model.fc_width=1.5 must be an integer >= 0"):
        Discriminator(28, 1, width=4, max_width=16, fc_width=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("image_size", [28, 64])
def test_resize_upsampling_draws_no_checkerboard(image_size: int) -> None:
    """A spatially constant input to G's stages comes out constant (away from the zero-padded
    border) with resize upsampling; ConvTranspose(4, stride 2) stamps a period-2 pattern on it."""
    torch.manual_seed(0)
    start, stages = stage_layout(image_size)
    border = 2**stages  # the padding's reach, doubled by each later stage
    for upsample, flat in (("resize", True), ("bilinear", True), ("transpose", False)):
        g = Generator(image_size, 1, latent_dim=8, width=4, max_width=16, upsample=upsample).eval()
        assert any(isinstance(m, nn.ConvTranspose2d) for m in g.blocks) != flat
        c0 = g.stem[0].out_channels
        with torch.no_grad():
            out = g.blocks(torch.randn(1, c0, 1, 1).expand(1, c0, start, start))
        inner = out[0, 0, border:-border, border:-border]
        assert (inner.max() - inner.min() < 1e-5) == flat, upsample


@pytest.mark.parametrize("image_size", [28, 64])
def test_bilinear_upsampling_draws_smoother_images_than_nearest(image_size: int) -> None:
    """The same weights draw smoother images with bilinear upsampling than with nearest-neighbour
    resize, whose 2x2 blocks show as steps between neighbouring pixels: the mean squared
    difference of neighbours is lower."""
    torch.manual_seed(0)
    nets = {
        u: Generator(image_size, 1, latent_dim=8, width=4, max_width=16, upsample=u) for u in ("resize", "bilinear")
    }
    nets["bilinear"].load_state_dict(nets["resize"].state_dict())  # Upsample has no weights
    z = torch.randn(16, 8)
    roughness = {}
    for upsample, g in nets.items():
        with torch.no_grad():
            x = g.train()(z)  # batch statistics: untrained running statistics would flatten the images
        steps = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., 1:] - x[..., :-1]).pow(2).mean()
        roughness[upsample] = float(steps / x.var())
    assert roughness["bilinear"] < 0.8 * roughness["resize"], roughness


def test_unknown_upsampling_is_refused_with_the_choices() -> None:
    message = "model.g_upsample='cubic' is not known; choose one of transpose, resize, bilinear"
    with pytest.raises(UserInputError, match=message):
        Generator(28, 1, latent_dim=8, width=4, max_width=16, upsample="cubic")


@pytest.mark.parametrize("image_size", SUPPORTED_IMAGE_SIZES)
def test_skips_carry_the_start_grids_image_to_every_pixel(image_size: int) -> None:
    """With skips, G's coarsest grid draws an image that reaches the whole output: a large
    negative bias there turns every pixel black, whatever the later stages draw."""
    g = Generator(image_size, 3, latent_dim=8, width=4, max_width=16, upsample="resize", skips=True)
    assert g.to_image is not None and len(g.to_image) == stage_layout(image_size)[1]
    with torch.no_grad():
        g.to_image[0].bias.fill_(-20.0)
        images = g.train()(torch.randn(4, 8))
    assert images.shape == (4, 3, image_size, image_size)
    assert images.max() < -0.999


@pytest.mark.parametrize("image_size", SUPPORTED_IMAGE_SIZES)
def test_skips_feed_each_later_stage_of_d_the_image_at_its_grid(image_size: int) -> None:
    """With skips, D's stages after the first each read the image shrunk to their grid: the
    logit follows a change of the coarsest stage's 1x1 conv."""
    d = Discriminator(image_size, 1, width=4, max_width=16, norm="none", skips=True)
    start, stages = stage_layout(image_size)
    assert d.from_image is not None and len(d.from_image) == stages - 1
    seen: list[int] = []
    for reader in d.from_image:
        reader.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[-1]))
    x = torch.rand(2, 1, image_size, image_size) * 2 - 1
    with torch.no_grad():
        before = d(x)
        d.from_image[-1][0].bias.fill_(5.0)
        after = d(x)
    assert seen[: stages - 1] == [image_size >> (k + 1) for k in range(1, stages)]
    assert seen[stages - 2] == start
    assert not torch.allclose(before, after)


def test_without_skips_the_networks_keep_their_checkpoint_keys() -> None:
    """skips=False adds no weights, so checkpoints from before the setting load as they are."""
    for net in (Generator(64, 1, latent_dim=8, width=4, max_width=16), Discriminator(64, 1, width=4, max_width=16)):
        assert not any("to_image" in k or "from_image" in k for k in net.state_dict())
