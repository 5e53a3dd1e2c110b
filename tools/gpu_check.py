"""``make gpu-check`` (``python tools/gpu_check.py``): the GPU checks in one command.

On a machine with a CUDA GPU it runs:

1. ``pytest -m gpu`` (tests/test_gpu.py);
2. the benchmark (tools/bench.py, quick settings, no FID) at 28, 64 and 128 px: float32 with the
   plain float32 baseline, then ``trainer.precision=bf16-mixed speed.compile=true``;

and writes every result as a JSON line to ``<out>/gpu-check.jsonl`` (the benchmark's own lines
in ``<out>/bench.jsonl``), then prints a Markdown summary. Exit 1 if a step failed. Without a
GPU it says so in one line and exits 0.

The machine it is meant for has PyTorch, Lightning, torchmetrics and pytest but not the
packages in ``WHEELS``: ``make gpu-wheels`` downloads them here into ``.whl/`` (git-excluded),
and this script installs them from there into a temporary folder when they are missing.
Datasets: ``$DCGAN_DATA_DIR``, else ``data/`` in the repository (copy ../shared/data there).
The FID weights are not needed: the GPU-vs-CPU feature test uses seeded random weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WHEEL_DIR = REPO / ".whl"
# What the project needs beyond what the GPU machine has (its image lists torch, torchvision,
# lightning, torchmetrics, tensorboard, matplotlib, numpy, pillow, scipy, pyyaml, packaging,
# tqdm and pytest), with what these need in turn.
WHEELS = ["hydra-core", "omegaconf", "antlr4-python3-runtime", "torch-fidelity"]
DEVICE_HAS = {
    "torch", "torchvision", "lightning", "torchmetrics", "tensorboard", "matplotlib", "numpy", "pillow",
    "scipy", "pyyaml", "packaging", "tqdm", "pytest", "typing-extensions", "importlib-resources",
}  # fmt: skip
BENCH = {
    "float32": ["--baseline"],
    "bf16-mixed, compiled": ["trainer.precision=bf16-mixed", "speed.compile=true"],
}
SIZES = ["28", "64", "128"]


def download_wheels(dest: Path = WHEEL_DIR) -> None:
    """The versions installed here of ``WHEELS``, as wheels for Python 3.12 on x86-64 Linux (all
    pure Python; antlr4's 4.9.3 exists only as a source archive, so it is built here)."""
    from importlib.metadata import version

    dest.mkdir(exist_ok=True)
    for name in WHEELS:
        pip = [sys.executable, "-m", "pip", "-q"]
        spec = f"{name}=={version(name)}"
        if name == "antlr4-python3-runtime":
            subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), spec], check=True)
        else:
            subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), spec], check=True)
    print(f"wheels in {dest}: " + ", ".join(sorted(p.name for p in dest.glob("*.whl"))))


def environment(wheels: Path) -> dict[str, str]:
    """The environment for the checks: the missing packages installed from ``wheels`` into a
    temporary folder on PYTHONPATH, the repository on PYTHONPATH (the GPU machine has a copy of
    it, not an install: tools/bench.py, run as a script, would not find ``dcgan``), and the GPU
    machine's data folder."""
    env = dict(os.environ)
    env.setdefault("DCGAN_DATA_DIR", str(REPO / "data"))
    # Every step trains on MNIST: say so at once, not after the GPU tests skipped for the want
    # of it (the suite skips without data) and the benchmark failed.
    if not (Path(env["DCGAN_DATA_DIR"]) / "MNIST" / "raw").is_dir():
        sys.exit(
            f"gpu-check: no MNIST/raw under {env['DCGAN_DATA_DIR']}; copy the datasets there "
            "(cp -r ../shared/data/. data/) or set DCGAN_DATA_DIR"
        )
    env["DCGAN_REQUIRE_DATA"] = "1"
    _put_first_on_path(env, REPO)
    missing = [n for n, module in (("hydra-core", "hydra"), ("torch-fidelity", "torch_fidelity")) if not _has(module)]
    if missing:
        found = sorted(wheels.glob("*.whl"))
        if not found:
            sys.exit(f"gpu-check: {', '.join(missing)} not installed and no wheels in {wheels}; run make gpu-wheels")
        site = tempfile.mkdtemp(prefix="dcgan-site-")
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        subprocess.run([*pip, "--target", site, *map(str, found)], check=True)
        _put_first_on_path(env, site)
    return env


def _put_first_on_path(env: dict[str, str], folder: Path | str) -> None:
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_pytest(env: dict[str, str], out: Path) -> dict[str, Any]:
    junit = out / "pytest.xml"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}", "-q"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    (out / "pytest.log").write_text(result.stdout + result.stderr)
    record: dict[str, Any] = {"check": "pytest -m gpu", "exit": result.returncode}
    record["seconds"] = round(time.monotonic() - start, 1)
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        record |= counts | {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]}
        record["failed_tests"] = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
    return record


def run_bench(env: dict[str, str], out: Path, name: str, args: list[str]) -> list[dict[str, Any]]:
    start = time.monotonic()
    command = [sys.executable, str(REPO / "tools" / "bench.py"), "--quick", "--no-fid", "--sizes", *SIZES]
    result = subprocess.run(
        [*command, "--out", str(out / "bench.jsonl"), *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    (out / f"bench-{name.split(',')[0]}.log").write_text(result.stdout + result.stderr)
    records = [
        {"check": f"bench {name}", **json.loads(line)} for line in result.stdout.splitlines() if line.startswith("{")
    ]
    status = {"check": f"bench {name}", "exit": result.returncode, "seconds": round(time.monotonic() - start, 1)}
    return [*records, status]


def summary(records: list[dict[str, Any]]) -> str:
    """The Markdown summary of a check's JSON lines."""
    lines = ["## make gpu-check", ""]
    device = next((r["device"] for r in records if "device" in r), None)
    if device:
        lines += [f"Device: {device}", ""]
    lines += ["| step | exit | seconds | result |", "|---|---|---|---|"]
    for r in records:
        if "exit" not in r:
            continue
        result = ""
        if "tests" in r:
            result = f"{r['passed']} passed, {r['failures'] + r['errors']} failed, {r['skipped']} skipped"
            result += "".join(f"<br>failed: {t}" for t in r["failed_tests"])
        lines.append(f"| {r['check']} | {r['exit']} | {r['seconds']} | {result} |")
    train = [r for r in records if r.get("bench") == "train"]
    if train:
        lines += ["", "| settings | size | batch | project img/s | plain img/s | ratio | vs fp32 baseline | peak MB |"]
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in train:
            speedup = f"{r['speedup']:.2f}x" if "speedup" in r else ""
            lines.append(
                f"| {r['check'].removeprefix('bench ')} | {r['size']} | {r['batch_size']} | "
                f"{r['project_images_per_s']:.0f} | {r['plain_images_per_s']:.0f} | {r['ratio']:.2f} | {speedup} | "
                f"{r.get('peak_gpu_allocated_mb', r.get('peak_rss_mb', ''))} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, help="results folder (default outputs/gpu-check/<date>_<time>)")
    p.add_argument("--wheels", type=Path, default=WHEEL_DIR, help="wheels of the missing packages (default .whl)")
    p.add_argument("--download-wheels", action="store_true", help="fetch the wheels into --wheels and stop")
    args = p.parse_args(argv)
    if args.download_wheels:
        download_wheels(args.wheels)
        return 0
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU on this machine (torch {torch.__version__}); nothing to check")
        return 0
    env = environment(args.wheels)
    out = args.out or REPO / "outputs" / "gpu-check" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    records = [run_pytest(env, out)]
    for name, extra in BENCH.items():
        records += run_bench(env, out, name, extra)
    with open(out / "gpu-check.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    text = summary(records)
    (out / "summary.md").write_text(text)
    print(text + f"\nResults: {out}")
    return 0 if all(r["exit"] == 0 for r in records if "exit" in r) else 1


if __name__ == "__main__":
    sys.exit(main())
