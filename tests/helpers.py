"""Test helpers shared by several test modules."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from dcgan.cli import instantiate_node
from dcgan.datasets import ImageDataModule

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def datamodule(dataset: str, **settings: Any) -> ImageDataModule:
    """The data module of ``conf/dataset/<dataset>.yaml`` with the shared ``dataset:`` settings of
    conf/train.yaml, and ``settings`` on top."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        path = ["dataset.path=unset"] if dataset == "folder" else []  # a required setting there
        cfg = compose("train", overrides=[f"dataset={dataset}", "paths.data_dir=unset", *path])
    return instantiate_node(cfg.dataset, "dataset", **settings)


def write_image_tree(root: Path) -> list[Path]:
    """A folder tree of images in many modes, sizes and formats, plus files to be ignored.
    Returns the image files, sorted like ``find_images``."""
    rng = np.random.default_rng(0)
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    images = {
        root / "rgb.png": Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)),
        root / "gray.JPG": Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)),
        root / "a" / "rgba.png": Image.fromarray(rng.integers(0, 256, (20, 50, 4), dtype=np.uint8)),
        root / "a" / "b" / "palette.png": Image.fromarray(
            rng.integers(0, 256, (33, 33, 3), dtype=np.uint8), "RGB"
        ).convert("P"),
        root / "a" / "b" / "deep.jpeg": Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)),
        root / "c" / "wide.bmp": Image.fromarray(rng.integers(0, 256, (16, 90, 3), dtype=np.uint8)),
        root / "c" / "small.webp": Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)),
        root / "c" / "sixteen.png": Image.fromarray(rng.integers(0, 65536, (24, 24), dtype=np.uint16)),
    }
    for path, img in images.items():
        img.save(path)
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "data.csv").write_text("1,2,3")
    (root / ".hidden.png").write_bytes(b"")  # hidden files are skipped
    return sorted(images)


def cpu_only(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the GPUs hidden: a script a test starts runs on the CPU, as the test
    means, also on a machine with a GPU (where the default trainer would take it)."""
    return {**env, "CUDA_VISIBLE_DEVICES": ""}


def run_script(
    script: str,
    *overrides: str,
    env: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    cwd: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    environment = cpu_only({k: v for k, v in os.environ.items() if k not in drop} | (env or {}))
    return subprocess.run(
        [sys.executable, str(REPO / script), *overrides],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def check(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def nan_loss_at(monkeypatch: pytest.MonkeyPatch, call: int) -> list[int]:
    """Make the discriminator's loss NaN on its ``call``-th evaluation (one per batch); return
    the list that counts the evaluations."""
    import dcgan.module

    real_loss, calls = dcgan.module.discriminator_loss, []

    def loss(*args: object) -> torch.Tensor:
        calls.append(1)
        value = real_loss(*args)  # type: ignore[arg-type]
        return value * float("nan") if len(calls) == call else value

    monkeypatch.setattr(dcgan.module, "discriminator_loss", loss)
    return calls


def record_builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any, Any]]:
    """Keep what ``dcgan.train.build`` returns, (datamodule, model, trainer), for each call, so a
    test can read the trainer's optimizers after ``train`` has ended or raised."""
    import dcgan.train

    built, build = [], dcgan.train.build
    monkeypatch.setattr(dcgan.train, "build", lambda *args: built.append(build(*args)) or built[-1])
    return built


def random_inception_weights(path: Path, seed: int = 0, monkeypatch: pytest.MonkeyPatch | None = None) -> Path:
    """A weights file of the FID Inception network with seeded random (He-normal) convolution
    weights: the architecture without the 96 MB download, for checks of a device's arithmetic
    (GPU vs CPU features), not of FID values. With ``monkeypatch``, the project accepts the
    file for the test (it refuses weights other than the FID network's)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity
    from torchmetrics.image.fid import NoTrainInceptionV3

    with (
        mock.patch.object(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: None),
        mock.patch.object(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda *args, **kwargs: None),
    ):
        net = NoTrainInceptionV3("inception-v3-compat", ["2048"], None)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in net.state_dict().items():
        if name.endswith("conv.weight"):  # He init keeps the activations' scale through the layers
            tensor = torch.randn(tensor.shape, generator=generator) * (2 / tensor[0].numel()) ** 0.5
        state[name] = tensor
    torch.save(state, path)
    if monkeypatch is not None:
        import dcgan.metrics

        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        monkeypatch.setitem(dcgan.metrics.KNOWN_WEIGHTS, sha256, "seeded random weights (a test's)")
    return path
