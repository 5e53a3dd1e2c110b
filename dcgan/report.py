"""``mode=report`` and ``mode=progress`` of generate.py: what a run directory shows after
training, from the files train.py writes: tensorboard/ event files (or csv/metrics.csv with
logger=csv), fid.jsonl, classes.jsonl and samples/epoch_*.png. Also read by tools/time_to_fid.py.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from dcgan.errors import UserInputError
from dcgan.files import atomic_path, save_gif, save_png

Series = tuple[np.ndarray, np.ndarray]  # (batches, values)

LOSS_TAGS = {"train/g_loss": "G loss", "train/d_loss": "D loss"}
D_TAGS = {"train/d_real": "D(x), real images", "train/d_fake": "D(G(z)), generated images"}


# --------------------------------------------------------------------------------------------
# reading a run's logs


def read_scalars(run_dir: Path) -> dict[str, Series]:
    """Every logged scalar of a run, by tag: (x = batches trained, values), from TensorBoard
    event files, or from the CSV logger's ``metrics.csv``."""
    tb_dir = run_dir / "tensorboard"
    if any(tb_dir.glob("events.out.tfevents.*")):
        # Imported here: loading TensorBoard's reader takes a second.
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
        acc.Reload()
        return {
            tag: (np.array([e.step for e in events]), np.array([e.value for e in events]))
            for tag in acc.Tags()["scalars"]
            if (events := acc.Scalars(tag))
        }
    csv_file = run_dir / "csv" / "metrics.csv"
    if csv_file.is_file():
        columns: dict[str, tuple[list[int], list[float]]] = {}
        with csv_file.open(newline="") as f:
            for row in csv.DictReader(f):
                for tag, value in row.items():
                    if tag in ("epoch", "step") or value in ("", None):
                        continue
                    xs, ys = columns.setdefault(tag, ([], []))
                    xs.append(int(row["step"]))
                    ys.append(float(value))
        return {tag: (np.array(xs), np.array(ys)) for tag, (xs, ys) in columns.items()}
    raise UserInputError(
        f"{run_dir} has no training logs (neither tensorboard/events.out.tfevents.* nor csv/metrics.csv); "
        "give the run directory train.py printed"
    )


def read_fid_records(run_dir: Path) -> list[dict[str, Any]]:
    """The in-training FID evaluations of a run (``fid.jsonl``), oldest first, without the score
    of best.ckpt at the end (against another reference); [] if none."""
    return [r for r in _fid_lines(run_dir) if "checkpoint" not in r]


def read_final_fid(run_dir: Path) -> dict[str, Any] | None:
    """The score of best.ckpt against ``eval.final_split`` at the end of training (the last line
    of ``fid.jsonl``, ``"checkpoint": "best.ckpt"``); None if the run has none."""
    return next((r for r in reversed(_fid_lines(run_dir)) if "checkpoint" in r), None)


def _fid_lines(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "fid.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # A run killed mid-write can leave a torn last line; the others still count.
            if number != len(lines):
                raise UserInputError(f"{path}, line {number}, is not JSON") from None
    return records


def epoch_grids(run_dir: Path) -> list[tuple[int, Path]]:
    """The fixed-noise grids ``samples/epoch_NNNN.png`` of a run, by epoch."""
    pattern = re.compile(r"epoch_(\d+)\.png")
    grids = [
        (int(m.group(1)), p) for p in (run_dir / "samples").glob("epoch_*.png") if (m := pattern.fullmatch(p.name))
    ]
    return sorted(grids)


# --------------------------------------------------------------------------------------------
# plots


def _smooth(x: np.ndarray, y: np.ndarray) -> Series:
    """A moving average over ~1/50 of the run: the trend under the per-batch noise."""
    window = max(1, len(y) // 50)
    if window == 1:
        return x, y
    kernel = np.ones(window) / window
    return x[window - 1 :], np.convolve(y, kernel, mode="valid")


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def plot_series(scalars: dict[str, Series], tags: dict[str, str], title: str, ylabel: str, path: Path) -> Path:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for tag, label in tags.items():
        x, y = scalars[tag]
        (line,) = ax.plot(x, y, linewidth=0.6, alpha=0.3)
        ax.plot(*_smooth(x, y), color=line.get_color(), linewidth=1.6, label=label)
    ax.set(title=title, xlabel="batches trained", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_fid(records: list[dict[str, Any]], path: Path) -> Path:
    epochs = [r["epoch"] for r in records]
    fids = [r["fid"] for r in records]
    best = int(np.argmin(fids))
    ref = records[-1].get("reference", {})
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.plot(epochs, fids, marker="o")
    ax.annotate(
        f"best {fids[best]:.2f}", (epochs[best], fids[best]), textcoords="offset points", xytext=(0, 10), ha="center"
    )
    last = records[-1]
    ax.set(
        title=(
            f"FID: {last.get('num_samples', 0):,} generated vs {last.get('num_reference', 0):,} "
            f"{ref.get('dataset', '')} {ref.get('split', '')} images, {ref.get('image_size', '?')}px"
        ),
        xlabel="epoch",
        ylabel="FID (lower is better)",
    )
    ax.margins(x=0.08, y=0.12)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def read_class_records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's class-coverage evaluations (``classes.jsonl``, one per line); [] without one."""
    path = run_dir / "classes.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plot_classes(records: list[dict[str, Any]], path: Path) -> Path:
    """The last evaluation's class histogram (share of generated images per predicted class),
    and classes covered and class KL over the epochs."""
    last = records[-1]
    counts = np.array(last["class_histogram"], dtype=float)
    fig = Figure(figsize=(11, 4.5))
    bars, curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    bars.bar(np.arange(len(counts)), counts / counts.sum())
    bars.axhline(1 / len(counts), color="gray", linestyle="--", linewidth=1, label="uniform")
    bars.set(
        title=f"Epoch {last['epoch']}: classes of {last['num_samples']:,} generated images",
        xlabel="class (by the classifier)",
        ylabel="share",
        xticks=np.arange(len(counts)),
    )
    bars.legend()
    epochs = [r["epoch"] for r in records]
    curve.plot(epochs, [r["classes_covered"] for r in records], marker="o", label="classes covered")
    curve.set(title="Class coverage", xlabel="epoch", ylabel="classes covered", ylim=(0, len(counts) + 0.5))
    kl = curve.twinx()
    kl.plot(epochs, [r["class_kl"] for r in records], color="tab:orange", marker=".", label="class KL")
    kl.set_ylabel("KL(generated || real), nats")
    curve.legend(loc="lower left")
    kl.legend(loc="lower right")
    curve.grid(alpha=0.3)
    return _save(fig, path)


def write_report(run_dir: Path, out_dir: Path) -> list[Path]:
    """PNG plots of a run: G and D losses, D(x) and D(G(z)), FID over the epochs, class coverage."""
    scalars = read_scalars(run_dir)
    written = []
    missing = [tag for tag in (*LOSS_TAGS, *D_TAGS) if tag not in scalars]
    if missing:
        raise UserInputError(f"{run_dir}'s logs have no {', '.join(missing)}; was it trained by this train.py?")
    written.append(plot_series(scalars, LOSS_TAGS, "Losses", "loss", out_dir / "report-losses.png"))
    written.append(
        plot_series(
            scalars, D_TAGS, "Discriminator outputs (mean probability of 'real')", "D", out_dir / "report-d.png"
        )
    )
    records = read_fid_records(run_dir)
    if records:
        written.append(plot_fid(records, out_dir / "report-fid.png"))
    classes = read_class_records(run_dir)
    if classes:
        written.append(plot_classes(classes, out_dir / "report-classes.png"))
    return written


# --------------------------------------------------------------------------------------------
# training progression


def _labelled(path: Path, label: str) -> Image.Image:
    """A grid with ``label`` written in a white band above it."""
    with Image.open(path) as img:
        grid = img.convert("RGB")
    font = ImageFont.load_default(size=12)
    band = 16
    frame = Image.new("RGB", (grid.width, grid.height + band), "white")
    frame.paste(grid, (0, band))
    ImageDraw.Draw(frame).text((4, 1), label, fill="black", font=font)
    return frame


def write_progress(run_dir: Path, out_dir: Path, frame_ms: int, strip_frames: int) -> list[Path]:
    """An animated GIF of a run's fixed-noise grids, one frame per saved epoch, and a strip PNG of
    up to ``strip_frames`` of them, evenly spaced from the first to the last."""
    grids = epoch_grids(run_dir)
    if not grids:
        raise UserInputError(f"{run_dir / 'samples'} holds no epoch_*.png grids; give a run directory of train.py")
    frames = [_labelled(path, f"epoch {epoch}") for epoch, path in grids]
    gif = save_gif(frames, out_dir / "progress.gif", frame_ms)
    picks = sorted({round(i) for i in np.linspace(0, len(frames) - 1, min(strip_frames, len(frames)))})
    gap = 4
    strip = Image.new("RGB", (sum(frames[i].width for i in picks) + gap * (len(picks) - 1), frames[0].height), "white")
    x = 0
    for i in picks:
        strip.paste(frames[i], (x, 0))
        x += frames[i].width + gap
    return [gif, save_png(strip, out_dir / "progress-strip.png")]
