"""tools/gpu_check.py on a machine without a GPU: its one-line answer, its summary of recorded
results, its wheel list against the project's dependencies, its install of those wheels."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.requirements import Requirement

from dcgan.metrics import InceptionFeatures
from tests.helpers import REPO, cpu_only, random_inception_weights

sys.path.insert(0, str(REPO / "tools"))
import gpu_check


@pytest.mark.slow
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check.py")],
        cwd=REPO, env=cpu_only(os.environ), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        f"gpu-check: no CUDA GPU on this machine (torch {torch.__version__}); nothing to check"
    ]


def _needed_on_the_gpu_machine(requirement: str) -> str | None:
    """The package's name, or None where its marker excludes Python 3.12 or it is an extra's."""
    parsed = Requirement(requirement)
    if parsed.marker and not parsed.marker.evaluate({"python_version": "3.12", "extra": ""}):
        return None
    return parsed.name.lower().replace("_", "-")


def test_the_wheels_and_the_gpu_machine_cover_the_project_dependencies() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    available = gpu_check.DEVICE_HAS | set(gpu_check.WHEELS)
    assert {_needed_on_the_gpu_machine(r) for r in project["dependencies"]} <= available
    for wheel in gpu_check.WHEELS:  # and what the carried packages need in turn
        needs = {_needed_on_the_gpu_machine(r) for r in requires(wheel) or []} - {None}
        assert needs <= available, f"{wheel} needs {needs - available}"


def test_the_wheels_are_installed_from_the_folder_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    monkeypatch.setenv("DCGAN_DATA_DIR", str(data_dir))
    calls: list[list[str]] = []
    monkeypatch.setattr(gpu_check, "_has", lambda module: False)
    monkeypatch.setattr(gpu_check.subprocess, "run", lambda command, **kw: calls.append(command))
    with pytest.raises(SystemExit, match="hydra-core, torch-fidelity not installed and no wheels in .*make gpu-wheels"):
        gpu_check.environment(tmp_path)
    (tmp_path / "hydra_core-1.3.8-py3-none-any.whl").write_bytes(b"")
    env = gpu_check.environment(tmp_path)
    [command] = calls
    site = command[command.index("--target") + 1]
    assert "--no-index" in command and command[-1] == str(tmp_path / "hydra_core-1.3.8-py3-none-any.whl")
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [site, str(REPO)]


def test_without_the_datasets_it_stops_at_once_and_with_them_missing_data_fails_the_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """Without MNIST the GPU tests would skip (the suite skips where data is missing) and gpu-check
    would report success: it stops before spending GPU time, naming the folder it looked in."""
    monkeypatch.setenv("DCGAN_DATA_DIR", str(tmp_path))
    expected = f"gpu-check: no MNIST/raw under {tmp_path}; copy the datasets there (cp -r ../shared/data/. data/)"
    with pytest.raises(SystemExit, match=re.escape(expected)):
        gpu_check.environment(REPO / "no-wheels-needed")
    monkeypatch.setenv("DCGAN_DATA_DIR", str(data_dir))
    assert gpu_check.environment(REPO / "no-wheels-needed")["DCGAN_REQUIRE_DATA"] == "1"


@pytest.mark.slow
def test_the_checks_import_the_repository_without_an_install(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """The GPU machine has a copy of the repository, not an install: tools/bench.py, started as
    a script, finds ``dcgan`` through PYTHONPATH (on torch 2.11 / Python 3.12 without the
    repository there: ModuleNotFoundError, and the benchmark step failed)."""
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("DCGAN_DATA_DIR", str(data_dir))
    env = gpu_check.environment(REPO / "no-wheels-needed")  # hydra and torch-fidelity are installed here
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/elsewhere"]
    # python -S: site-packages only as a plain folder on PYTHONPATH, without the .pth file
    # through which the editable install finds the repository.
    packages = next(p for p in sys.path if p.endswith("site-packages"))
    result = subprocess.run(
        [sys.executable, "-S", str(REPO / "tools" / "bench.py"), "--help"],
        cwd=REPO / "tools", env=cpu_only(env | {"PYTHONPATH": env["PYTHONPATH"] + os.pathsep + packages}),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.startswith("usage: python tools/bench.py"), result.stderr[-2000:]


def test_the_summary_of_recorded_results() -> None:
    train: dict[str, Any] = {"bench": "train", "device": "cuda:0 (NVIDIA H200)", "size": 64, "batch_size": 128}
    records = [
        {"check": "pytest -m gpu", "exit": 1, "seconds": 80.5, "tests": 5, "failures": 1, "errors": 0, "skipped": 0}
        | {"passed": 4, "failed_tests": ["tests.test_gpu::test_x"]},
        {"check": "bench float32", **train, "project_images_per_s": 9000.4, "plain_images_per_s": 10000.0}
        | {"ratio": 0.9, "speedup": 1.0, "peak_gpu_allocated_mb": 812.5},
        {"check": "bench float32", "bench": "data", "device": "cuda:0 (NVIDIA H200)", "size": 64},
        {"check": "bench float32", "exit": 0, "seconds": 120.0},
    ]
    text = gpu_check.summary(records)
    assert "Device: cuda:0 (NVIDIA H200)" in text
    assert "| pytest -m gpu | 1 | 80.5 | 4 passed, 1 failed, 0 skipped<br>failed: tests.test_gpu::test_x |" in text
    assert "| bench float32 | 0 | 120.0 |  |" in text
    assert "| float32 | 64 | 128 | 9000 | 10000 | 0.90 | 1.00x | 812.5 |" in text


def test_random_inception_weights_load_and_give_features_that_differ_per_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the GPU-vs-CPU feature test compares: the FID network's path, with weights that keep
    the activations' scale (default initialisation shrinks them towards 0 over the layers)."""
    weights = str(random_inception_weights(tmp_path / "inception.pth", monkeypatch=monkeypatch))
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = InceptionFeatures(weights, batch_size=4)(images)
    assert features.shape == (4, 2048) and features.abs().max() > 0.1
    assert (features[0] - features[1]).abs().max() > 1e-3 * features.abs().max()
    assert torch.equal(features, InceptionFeatures(weights, batch_size=4)(images))  # seeded, deterministic
