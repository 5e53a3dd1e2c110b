"""Summarize a Hydra multirun: one row per job, sorted by FID, failed jobs included.

    python tools/sweep.py multirun/<experiment>/<date>_<time>

Prints a table and writes ``summary.csv`` and ``summary.md`` into the sweep folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dcgan.cli import exit_with
from dcgan.errors import UserInputError
from dcgan.files import atomic_path

# Scores of the last evaluation besides FID: precision and recall; the classifier's (MNIST,
# Fashion-MNIST; docs/evaluation.md).
SCORE_COLUMNS: tuple[str, ...] = ("precision", "recall", "classes_covered", "class_kl", "cond_accuracy", "fid_lenet")
COLUMNS: tuple[str, ...] = (
    "job", "status", "fid_best", "best_epoch", "fid", *SCORE_COLUMNS, "epochs", "wall_s", "overrides", "error",
)  # fmt: skip


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep: those Hydra wrote a ``.hydra/overrides.yaml`` into, at any
    depth (an override with a ``/`` in its value nests the job's folder name)."""
    jobs = {p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")} - {sweep_dir}
    return sorted(jobs, key=lambda p: _job_number(p.relative_to(sweep_dir).as_posix()))


def _job_number(name: str) -> tuple[int, str]:
    head = name.split("_", 1)[0]
    return (int(head), name) if head.isdigit() else (sys.maxsize, name)


def job_row(job: Path, sweep_dir: Path) -> dict[str, Any]:
    """One job's row: from its ``metrics.json``, or, when it has none (killed, or still
    running), status ``no result`` with its overrides."""
    overrides = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "overrides.yaml")) or []
    name = job.relative_to(sweep_dir).as_posix()
    row: dict[str, Any] = dict.fromkeys(COLUMNS) | {"job": name, "overrides": " ".join(overrides)}
    metrics = job / "metrics.json"
    if not metrics.is_file():
        return row | {"status": "no result"}
    record = json.loads(metrics.read_text())
    row |= {k: record.get(k) for k in ("status", "fid_best", "best_epoch", "fid", "epochs", "wall_s", "error")}
    logged = record.get("metrics") or {}
    row |= {k: logged.get(f"val/{k}") for k in SCORE_COLUMNS}
    return row


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """All jobs' rows: completed ones by best FID (lowest first; runs without FID after them),
    then the failed and unfinished ones."""
    sweep = Path(sweep_dir).expanduser()
    if not sweep.is_dir():
        raise UserInputError(f"sweep folder {sweep} does not exist")
    jobs = job_dirs(sweep)
    if not jobs:
        raise UserInputError(f"{sweep} holds no job folders (<job>/.hydra/overrides.yaml); give a multirun folder")
    rows = [job_row(job, sweep) for job in jobs]

    def key(row: dict[str, Any]) -> tuple[int, float]:
        if row["status"] != "completed":
            return (2, 0.0)
        fid = row["fid_best"]
        return (0, fid) if fid is not None and math.isfinite(fid) else (1, 0.0)

    return sorted(rows, key=key)  # stable: job order among equals


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return " ".join(str(value).split())  # one line: a multi-line error would break its table row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [_cell(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_summary(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[Path]]:
    rows = summarize(sweep_dir)
    sweep = Path(sweep_dir).expanduser()
    written = []
    for name, text in (("summary.md", markdown(rows)), ("summary.csv", to_csv(rows))):
        with atomic_path(sweep / name) as tmp:
            tmp.write_text(text)
        written.append(sweep / name)
    return rows, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/sweep.py", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. multirun/mnist28/2026-11-24_10-00-00")
    args = parser.parse_args(argv)
    try:
        rows, written = write_summary(args.sweep_dir)
    except UserInputError as e:
        exit_with(e)
    print(markdown(rows), end="")
    failed = sum(row["status"] != "completed" for row in rows)
    print(f"\n{len(rows)} jobs, {failed} failed or unfinished. Wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
