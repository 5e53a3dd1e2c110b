"""Shared fixtures: the real datasets in ../shared/data, Hydra composition, tiny image trees."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tests.helpers import CONF, REPO, check, run_script, write_image_tree


def _fid_weights() -> Path:
    env = os.environ.get("DCGAN_FID_WEIGHTS")
    return Path(env) if env else REPO.parent / "shared" / "weights" / "inception-2015-12-05-fid-features-only.pth"


@pytest.fixture(scope="session", autouse=True)
def _offline_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point every test, and the scripts they start, at the local FID weights and at a fresh
    cache folder for FID reference features (computed once per test session)."""
    patch = pytest.MonkeyPatch()
    if _fid_weights().is_file():
        patch.setenv("DCGAN_FID_WEIGHTS", str(_fid_weights()))
    patch.setenv("DCGAN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _processes_only_in_slow_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that starts a process must be marked ``slow``: ``-m 'not slow'`` starts none but the
    session's one smoke run (a session fixture, set up before this patch)."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(self: subprocess.Popen, args: object, *more: object, **kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}): mark it @pytest.mark.slow")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def _missing(message: str) -> None:
    if os.environ.get("DCGAN_REQUIRE_DATA") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def fid_weights() -> Path:
    """The FID Inception weights file (see ../shared/README.md)."""
    if not _fid_weights().is_file():
        _missing(f"FID weights not found at {_fid_weights()}; set DCGAN_FID_WEIGHTS")
    return _fid_weights()


def _data_dir() -> Path:
    env = os.environ.get("DCGAN_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding MNIST/raw and FashionMNIST/raw (read-only is fine: nothing is
    unpacked there). Missing data or weights skip the test, or fail it when
    DCGAN_REQUIRE_DATA=1 (CI)."""
    root = _data_dir()
    if not (root / "MNIST" / "raw").is_dir():
        _missing(f"MNIST not found under {root}; set DCGAN_DATA_DIR to a folder holding MNIST/raw")
    return root


@pytest.fixture
def compose_cfg(tmp_path: Path, data_dir: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml with overrides, as train.py would, writing into tmp_path. On the
    CPU (trainer=cpu) unless the overrides choose a trainer: the default one would take a GPU;
    in float32 unless they choose a precision: trainer.precision=auto takes bfloat16 on some
    CPUs, and tests that compare weights across settings mean float32's rounding."""

    def _compose(*overrides: str, run: str = "run") -> DictConfig:
        cpu = [] if any(o.startswith("trainer=") for o in overrides) else ["trainer=cpu"]
        if not any(o.startswith("trainer.precision=") for o in overrides):
            cpu.append("trainer.precision=32-true")
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                "train",
                overrides=[f"paths.output_dir={tmp_path / run}", f"paths.data_dir={data_dir}", *cpu, *overrides],
            )

    return _compose


@pytest.fixture
def image_tree(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "images"
    return root, write_image_tree(root)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, fid_weights: Path) -> Path:
    """One `experiment=smoke` run: 2 epochs of 5 batches, FID of 16 images after each."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    check(run_script("train.py", "experiment=smoke", f"hydra.run.dir={run_dir}", env={"DCGAN_DATA_DIR": str(data_dir)}))
    return run_dir
