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
from tests.helpers import nan_loss_at, random_inception_weights

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
def test_bf16_compiled_training_on_the_gpu(compose_cfg: Callable[..., DictConfig], tmp_path: Path, mode: str) -> None:
    cfg = compose_cfg(
        *GPU,
        "trainer.precision=bf16-mixed",
        "speed.compile=true",
        f"speed.compile_mode={mode}",
        "trainer.max_epochs=1",
    )
    record = train(cfg)
    assert record["status"] == "completed"
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    assert all(t.dtype != torch.bfloat16 for t in state.values())  # weights stay float32
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_nan_loss_on_the_gpu_drops_the_update_on_the_device_and_stops_at_the_next_logging_step(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = nan_loss_at(monkeypatch, call=8)  # epoch 2 (5 batches per epoch), batch 3
    cfg = compose_cfg(*GPU, "trainer.max_epochs=3", "trainer.log_every_n_steps=50")
    with pytest.raises(TrainingDiverged, match=r"^d_loss is nan at epoch 2, batch 3 \(batch 8 of the run\)"):
        train(cfg)
    assert len(calls) == 10  # read at epoch 2's last batch, before its checkpoint
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_fid_features_on_the_gpu_agree_with_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Inception network with seeded random weights (the real ones need not travel to a
    GPU machine): the same arithmetic on both devices, up to summation order."""
    weights = str(random_inception_weights(tmp_path / "inception.pth", monkeypatch=monkeypatch))
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = InceptionFeatures(weights, batch_size=16)(images)
    gpu = InceptionFeatures(weights, batch_size=16).cuda()(images).cpu()
    error = ((gpu - cpu).abs().max() / cpu.abs().max()).item()
    assert error < 1e-3, f"max |gpu - cpu| / max |cpu| = {error:.2e}"
