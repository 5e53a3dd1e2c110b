"""``python tools/time_to_fid.py [options] (<train.py overrides> | --run <run dir>)``: how fast a
recipe reaches a FID.

Trains the recipe (``python train.py <overrides>``), keeping its checkpoint after each epoch of
``--fid-epochs`` (``callbacks.checkpoint.keep_epochs``), or reads a run folder train.py wrote
(``--run``). Then scores FID at N = 10,000 against the test split, as
the README's table does (``generate.py mode=fid``: the EMA generator where the run keeps one),
of those checkpoints and the last one; where the run itself scored its best.ckpt that way
(``eval.final_split=test``), that score is taken instead of a second one. One JSON line per
record on stdout, appended to ``--out``:

- ``run``: the hardware the run trained on (CPU model or GPU, threads) and the precision,
  from its metrics.json; torch; the dataset, overrides and run folder; ``run_wall_s``, the whole
  run's time (set-up, one-time reference features, evaluations, final score);
- ``epoch``, one per epoch: ``train_s``, the training time so far (the epochs alone, from
  ``time/epoch_s``), ``wall_s``, that plus the in-training evaluations (FID, the classifier's),
  images seen, and the classifier's ``fid_lenet`` (MNIST, Fashion-MNIST), the cheap quality
  figure along the way;
- ``fid``, one per scored checkpoint: its epoch, ``train_s``, FID, precision, recall;
- ``reached``, one per ``--targets`` FID: the ``train_s`` of the first scored checkpoint below it
  (null: none was).

``--plot <png> <jsonl files>`` draws the curves of such files: fid_lenet and FID over the
training minutes, one colour per run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from dcgan.cli import exit_with
from dcgan.errors import ReportedError, UserInputError
from dcgan.files import atomic_path
from dcgan.generate import generate
from dcgan.loop import epochs_trained
from dcgan.report import read_class_records, read_fid_records, read_final_fid, read_scalars
from dcgan.run import read_checkpoint
from dcgan.speed import device_name

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# FIDs worth reaching, N = 10,000 vs test: Lucic et al. 2018's best published (NS GAN / WGAN)
# and the project's aims (issue 33): MNIST 10 and 6.7, Fashion-MNIST 21.5 and 12.
TARGETS = {"mnist": (10.0, 6.7), "fashion_mnist": (21.5, 12.0)}


def train_recipe(overrides: list[str], run_dir: Path, fid_epochs: list[int]) -> None:
    """``python train.py <overrides>`` into ``run_dir``, keeping the checkpoints of
    ``fid_epochs``; its output goes to stderr."""
    keep = f"callbacks.checkpoint.keep_epochs=[{','.join(map(str, fid_epochs))}]"
    command = [sys.executable, str(REPO / "train.py"), *overrides, keep, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, stdout=2, check=False)  # fd 2: stdout keeps only the JSON lines
    if result.returncode != 0:
        raise ReportedError(f"training failed (exit {result.returncode}): {' '.join(command[1:])}")


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    """Per epoch: training seconds so far (``time/epoch_s`` in the run's logs), those plus the
    in-training evaluations' (``classes.jsonl``, ``fid.jsonl``; the final score of best.ckpt
    apart), images seen, the classifier's fid_lenet."""
    scalars = read_scalars(run_dir)
    if "time/epoch_s" not in scalars:
        raise UserInputError(f"{run_dir} has no time/epoch_s in its logs; give a run folder of train.py")
    # By the step at the epoch's end: an epoch logged again after a resume counts once.
    epoch_s = dict(zip(*(a.tolist() for a in scalars["time/epoch_s"]), strict=True))
    rates = dict(zip(*(a.tolist() for a in scalars["time/images_per_s"]), strict=True))
    classes = {r["epoch"]: r for r in read_class_records(run_dir)}
    fids = {r["epoch"]: r for r in read_fid_records(run_dir)}
    records, train_s, eval_s, images = [], 0.0, 0.0, 0.0
    for epoch, step in enumerate(sorted(epoch_s), 1):
        train_s += epoch_s[step]
        eval_s += sum(r["seconds"] for r in (classes.get(epoch), fids.get(epoch)) if r is not None)
        images += rates.get(step, 0.0) * epoch_s[step]
        lenet = classes.get(epoch, {}).get("fid_lenet")
        records.append(
            {
                "record": "epoch",
                "epoch": epoch,
                "train_s": round(train_s, 3),  # ms: a smoke epoch lasts a few hundredths of a second
                "wall_s": round(train_s + eval_s, 3),
                "images": round(images),
                "fid_lenet": round(lenet, 3) if lenet is not None else None,
            }
        )
    return records


def score(checkpoint: Path, num_samples: int, reference_samples: int | None) -> dict[str, Any]:
    """generate.py mode=fid of ``checkpoint``: N generated vs the test split (all of it, or a
    fixed subset of ``reference_samples``)."""
    out = checkpoint.parent.parent / "eval" / f"time_to_fid-{checkpoint.stem}-n{num_samples}.json"
    reference = "null" if reference_samples is None else reference_samples
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "generate",
            overrides=[
                "mode=fid",
                f"checkpoint={checkpoint}",
                f"fid.num_samples={num_samples}",
                f"fid.reference_samples={reference}",
                f"fid.out={out}",
            ],
        )
    with contextlib.redirect_stdout(sys.stderr):  # generate.py prints its record; ours go to stdout
        [written] = generate(cfg)
    return json.loads(Path(written).read_text())


def same_scoring(record: dict[str, Any], num_samples: int, reference_samples: int | None) -> bool:
    """Whether a FID record is N = ``num_samples`` against the test split (all of it, or the
    subset of ``reference_samples``): the scoring of ``score``."""
    reference = record["reference"]
    return (
        record["num_samples"] == num_samples
        and reference["split"] == "test"
        and reference["num_samples"] == reference_samples
    )


def time_to_fid(
    run_dir: Path, num_samples: int, targets: list[float] | None, reference_samples: int | None = None
) -> list[dict[str, Any]]:
    """The records of a trained run: ``run``, ``epoch`` lines, ``fid`` of its kept and last
    checkpoints, ``reached`` per target."""
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    metrics_file = run_dir / "metrics.json"
    record = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    epochs = epoch_records(run_dir)
    dataset = str(saved.dataset.get("name"))
    header = {
        "record": "run",
        # what the run trained on (metrics.json); a run from before it recorded that: this machine
        "device": record.get("device") or f"{device_name(torch.device('cpu'))} (scoring machine)",
        "threads": record.get("threads"),
        "precision": record.get("precision", saved.trainer.precision),
        "torch": torch.__version__,
        "dataset": dataset,
        "overrides": [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else [],
        "run_dir": str(run_dir.resolve()),
        "status": record.get("status"),
        # the whole run: set-up, one-time reference features, evaluations, final scoring
        "run_wall_s": record.get("wall_s"),
    }
    checkpoints = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    last = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoints and not last.is_file():
        raise UserInputError(f"{run_dir}/checkpoints holds neither last.ckpt nor epoch_<n>.ckpt to score")
    results: dict[int, tuple[str, dict[str, Any]]] = {}
    final = read_final_fid(run_dir)
    if final is not None and same_scoring(final, num_samples, reference_samples):
        # The run scored best.ckpt the way we would (eval.final_*): ~10 min on a CPU not spent again.
        results[int(final["epoch"])] = ("best.ckpt", final)
    for checkpoint in [*checkpoints, *([last] if last.is_file() else [])]:
        epoch = epochs_trained(read_checkpoint(checkpoint))
        if epoch not in results:  # last.ckpt of a kept epoch, or the run's best.ckpt already scored
            results[epoch] = (checkpoint.name, score(checkpoint, num_samples, reference_samples))
    scored = []
    for epoch, (name, result) in sorted(results.items()):
        at = next((e for e in epochs if e["epoch"] == epoch), {})
        scored.append(
            {
                "record": "fid",
                "epoch": epoch,
                "train_s": at.get("train_s"),
                "wall_s": at.get("wall_s"),
                "images": at.get("images"),
                "checkpoint": name,
                "fid": round(result["fid"], 3),
                "precision": result.get("precision"),
                "recall": result.get("recall"),
                "num_samples": result["num_samples"],
                "num_reference": result["num_reference"],
                "reference": result["reference"]["split"],
            }
        )
    in_order = sorted(scored, key=lambda s: s["epoch"])
    reached = [
        {
            "record": "reached",
            "fid": target,
            "train_s": next((s["train_s"] for s in in_order if s["fid"] < target), None),
        }
        for target in (targets if targets is not None else TARGETS.get(dataset, ()))
    ]
    return [header, *epochs, *scored, *reached]


def plot(files: list[Path], out: Path) -> Path:
    """The curves of several time-to-FID records (``--out`` files of this tool): fid_lenet over
    the training minutes, and the FIDs scored at N = 10,000 with the targets, one colour per run,
    named by its file."""
    fig = Figure(figsize=(11, 4.5))
    lenet_ax, fid_ax = fig.subplots(1, 2)
    targets: set[float] = set()
    for path in files:
        records = _lines(path)
        runs = [i for i, r in enumerate(records) if r["record"] == "run"]
        for start, end in zip(runs, [*runs[1:], len(records)], strict=True):
            header, body = records[start], records[start + 1 : end]
            # A file's name says what its run is; the settings tell the runs of one file apart
            # (and stay as recorded when a recipe later changes what its name means).
            label = path.stem if len(runs) == 1 else f"{path.stem}: {_label(header['overrides'])}"
            epochs = [r for r in body if r["record"] == "epoch" and r["fid_lenet"] is not None]
            (line,) = lenet_ax.plot([r["train_s"] / 60 for r in epochs], [r["fid_lenet"] for r in epochs], label=label)
            fids = [r for r in body if r["record"] == "fid"]
            fid_ax.plot([r["train_s"] / 60 for r in fids], [r["fid"] for r in fids], "o-", color=line.get_color())
            targets |= {r["fid"] for r in body if r["record"] == "reached"}
            device = header["device"]
    for target in sorted(targets):
        fid_ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    lenet_ax.set(xlabel="training minutes", ylabel="fid_lenet (log scale)", yscale="log")
    lenet_ax.set_title("fid_lenet after every epoch", fontsize=10)
    fid_ax.set(xlabel="training minutes", ylabel="FID (lower is better)")
    fid_ax.set_title("FID, N = 10,000 vs the test split; dotted: targets", fontsize=10)
    for ax in (lenet_ax, fid_ax):
        ax.grid(alpha=0.3)
    lenet_ax.legend(fontsize=7)
    fig.suptitle(f"Time to FID on {device}", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def _label(overrides: list[str], width: int = 48) -> str:
    """A run's name in a legend: its settings but those that only say where things go."""
    text = " ".join(o for o in overrides if not o.startswith(("hydra.", "callbacks.", "eval.")))
    text = text or "the defaults (make train)"
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python tools/time_to_fid.py", description=__doc__.split("\n\n")[0].split(": ", 1)[-1]
    )
    parser.add_argument("--run", type=Path, help="score this run folder of train.py instead of training one")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file too")
    parser.add_argument(
        "--fid-epochs", default="", help="comma-separated epochs whose checkpoints are also scored, e.g. 5,10"
    )
    parser.add_argument("--fid-samples", type=int, default=10000, help="N generated images per FID (default 10000)")
    parser.add_argument(
        "--reference-samples", type=int, help="test images FID compares with (default: all; fewer for quick tries)"
    )
    parser.add_argument("--targets", default=None, help="comma-separated FIDs to report the time to reach")
    parser.add_argument("--run-dir", type=Path, help="where to train (default outputs/time_to_fid/<experiment>)")
    parser.add_argument(
        "--plot", type=Path, help="draw the curves of the JSONL files given (not overrides) into this PNG"
    )
    parser.add_argument("overrides", nargs="*", help="train.py settings, e.g. experiment=fashion28 eval.fid=false")
    # intermixed: overrides may stand before, between or after the options (--out x.jsonl
    # experiment=fashion28 --run-dir outputs/f28 eval.fid=false); parse_args stops at the second run
    args = parser.parse_intermixed_args(argv)
    try:
        args.fid_epochs = [int(e) for e in args.fid_epochs.split(",") if e]
        args.targets = [float(t) for t in args.targets.split(",")] if args.targets else None
    except ValueError:
        parser.error("--fid-epochs takes integers and --targets numbers, comma-separated")
    if args.plot is not None:
        if not args.overrides or args.run is not None:
            parser.error("--plot draws the JSONL files of earlier runs of this tool: give them instead of overrides")
        return args
    if args.run is not None and (args.overrides or args.fid_epochs):
        parser.error("--run scores a run as it is: give no overrides or --fid-epochs with it")
    if args.fid_samples < 2:
        parser.error("--fid-samples must be 2 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.plot is not None:
        missing = [f for f in args.overrides if not Path(f).is_file()]
        if missing:
            exit_with(UserInputError(f"--plot: {', '.join(missing)} not found; give JSONL files of this tool"))
        print(plot([Path(f) for f in args.overrides], args.plot))
        return 0
    try:
        if args.run is not None:
            if not (args.run / ".hydra" / "config.yaml").is_file():
                raise UserInputError(f"--run {args.run} is not a run folder of train.py (no .hydra/config.yaml)")
            run_dir = args.run
        else:
            experiment = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("experiment=")), "mnist28")
            run_dir = args.run_dir or Path("outputs") / "time_to_fid" / experiment
            train_recipe(args.overrides, run_dir, args.fid_epochs)
        records = time_to_fid(run_dir, args.fid_samples, args.targets, args.reference_samples)
    except ReportedError as e:
        exit_with(e)
    lines = [json.dumps(r) for r in records]
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    # Progress on stderr, as train.py gives it; stdout keeps the JSON lines.
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    sys.exit(main())
