"""On a CUDA GPU (skipped without one): training takes the fast path (data held on the GPU as
uint8, fused optimizers that drop non-finite updates on the device, bf16 autocast, compiled
networks), what it writes loads on a CPU, and FID features agree with the CPU's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from dcgan.errors import TrainingDiverged
from dcgan.metrics import InceptionFeatures
from dcgan.sampling import load_generator_module
from dcgan.train import build, train
from tests.helpers import nan_loss_at, random_inception_weights, record_builds

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = ("experiment=smoke", "trainer=gpu", "logger=csv", "eval.fid=false", "+trainer.enable_progress_bar=false")


def test_gpu_training_keeps_the_data_on_the_gpu_and_its_checkpoints_load_on_a_cpu(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    datamodule, model, trainer = build(compose_cfg(*GPU, "trainer.max_epochs=2"))
    trainer.fit(model, datamodule=datamodule)
    assert datamodule.images is not None and datamodule.images.device.type == "cuda"
    assert datamodule.images.dtype == torch.uint8
    assert [bool(opt.defaults["fused"]) for opt in trainer.optimizers] == [True, True]  # fused=auto
    assert torch.backends.cudnn.benchmark  # trainer.benchmark: true
    generator = load_generator_module(tmp_path / "run" / "checkpoints" / "last.ckpt", device="cpu")
    images = generator(torch.randn(4, generator.hparams.latent_dim))
    assert images.device.type == "cpu" and images.shape == (4, 1, 28, 28) and torch.isfinite(images).all()


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_bf16_compiled_training_on_the_gpu(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    from torch._dynamo.utils import counters

    import dcgan.module

    real_loss, logit_dtypes = dcgan.module.discriminator_loss, set()

    def loss(name: str, real: torch.Tensor, fake: torch.Tensor, *args: float) -> torch.Tensor:
        logit_dtypes.update({real.dtype, fake.dtype})
        return real_loss(name, real, fake, *args)

    monkeypatch.setattr(dcgan.module, "discriminator_loss", loss)
    cfg = compose_cfg(
        *GPU,
        "trainer.precision=bf16-mixed",
        "speed.compile=true",
        f"speed.compile_mode={mode}",
        "trainer.max_epochs=1",
    )
    counters.clear()
    record = train(cfg)
    assert record["status"] == "completed"
    assert logit_dtypes == {torch.bfloat16}  # D ran under bf16 autocast
    assert counters["stats"]["unique_graphs"] >= 2, dict(counters["stats"])  # G and D were compiled
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    assert all(t.dtype != torch.bfloat16 for t in state.values())  # weights stay float32
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_nan_loss_on_the_gpu_drops_the_update_on_the_device_and_stops_at_the_next_logging_step(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = nan_loss_at(monkeypatch, call=8)  # epoch 2 (5 batches per epoch), batch 3
    built = record_builds(monkeypatch)
    cfg = compose_cfg(*GPU, "trainer.max_epochs=3", "trainer.log_every_n_steps=50")
    with pytest.raises(TrainingDiverged, match=r"^d_loss is nan at epoch 2, batch 3 \(batch 8 of the run\)"):
        train(cfg)
    assert len(calls) == 10  # read at epoch 2's last batch, before its checkpoint
    # The fused kernels skipped batch 8's D update on the device (found_inf) and made the others.
    [(_, model, trainer)] = built
    assert [bool(opt.defaults["fused"]) for opt in trainer.optimizers] == [True, True]
    assert all(torch.isfinite(p).all() for p in model.discriminator.parameters())
    assert [int(next(iter(opt.state.values()))["step"]) for opt in trainer.optimizers] == [10, 9]  # G, D
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_fid_features_on_the_gpu_agree_with_the_cpu_and_tf32_would_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Inception network with seeded random weights (the real ones need not travel to a
    GPU machine): the same arithmetic on both devices, up to summation order. The tolerance
    separates the two cases: on a CPU, NCHW vs channels-last (summation order) differ by 6.8e-7
    of the largest feature, and convolutions with operands rounded to TF32's 10 mantissa bits
    (cuDNN's default on this GPU, kept off for FID features) by 8.8e-4."""
    weights = str(random_inception_weights(tmp_path / "inception.pth", monkeypatch=monkeypatch))
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = InceptionFeatures(weights, batch_size=16)(images)

    def error(features: torch.Tensor) -> float:
        return ((features.cpu() - cpu).abs().max() / cpu.abs().max()).item()

    features = InceptionFeatures(weights, batch_size=16).cuda()
    full = error(features(images))
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]
    monkeypatch.setattr(conv, "fp32_precision", "tf32")
    with torch.inference_mode():  # the network itself, without full_precision_convolutions
        tf32 = error(features.net(images.expand(-1, 3, -1, -1).contiguous().cuda()).float())
    assert full < 3e-4 < tf32, f"max |gpu - cpu| / max |cpu|: {full:.2e} in float32, {tf32:.2e} with TF32"
