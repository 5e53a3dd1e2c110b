"""``python tools/bench.py``: what the framework costs and how fast its parts run.

For each model size (28, 64, 128; widths and batch size from the shipped experiments
mnist28_dcgan, fashion64_dcgan, fashion128_dcgan: the DCGAN of the paper), in one process per size:

- ``train``: training images/s through the project's real path (the Hydra config, DataModule,
  LightningModule and Trainer, with the configured logger, checkpoints and sample grids; FID
  off) and through a minimal plain PyTorch loop on copies of the same networks, with the same
  optimizers, losses, batch size and in-memory data, and the same speed settings (layout,
  fused optimizer, torch.compile, bf16 autocast). The two alternate, ``--rounds`` times, each
  timing ``--batches`` batches after ``--warmup`` untimed ones; the ratio is project/plain.
  With ``--baseline``, a third loop alternates with them: the plain loop in float32, NCHW,
  uncompiled, with torch's default optimizer kernels; ``speedup`` is project/baseline.
- ``data``: images/s that the data path alone delivers to the device, scaled to [-1, 1].
- ``fid``: images/s of the FID Inception network alone, and the parts of one in-training
  evaluation at the configured N: FID (generate ``eval.num_samples`` images, features, FID),
  precision and recall on top of it (a k-NN search among the same features), and the
  classifier's scores (class coverage, ``fid_lenet``) of ``eval.classifier_num_samples`` images.
- every record: device, torch version, threads, precision, compile mode (or false), layout,
  fused optimizer, cuDNN benchmark, peak memory (RSS on a CPU, max allocated on a GPU).

One JSON line per record on stdout (and appended to ``--out``); a table on stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from dcgan.callbacks import FIDCallback
from dcgan.classifier import Classifier, ClassifierKey, ClassifierScorer, LeNet, classifies
from dcgan.cli import exit_with
from dcgan.datasets import ImageDataModule
from dcgan.errors import ReportedError, UserInputError
from dcgan.images import to_unit_range
from dcgan.losses import discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from dcgan.metrics import FEATURE_DIM, FIDScorer, InceptionFeatures, load_inception, precision_recall
from dcgan.module import DCGAN, EMA
from dcgan.sampling import latents
from dcgan.speed import PLAIN, Speed, device_name

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = {28: "mnist28_dcgan", 64: "fashion64_dcgan", 128: "fashion128_dcgan"}

# --baseline: how the networks run without any speed switch.
BASELINE = PLAIN

# (warmup, timed batches, rounds) for --quick and for a full run.
QUICK = (2, 5, 2)
FULL = (5, 30, 3)


def compose_experiment(size: int, output_dir: Path, *overrides: str) -> DictConfig:
    """The shipped experiment of ``size``, FID off, writing into ``output_dir``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"experiment={EXPERIMENTS[size]}",
                "eval.fid=false",
                f"paths.output_dir={output_dir}",
                "+trainer.enable_model_summary=false",
                *overrides,
            ],
        )


def environment(device: torch.device, model: DCGAN, trainer: L.Trainer) -> dict[str, Any]:
    speed = model.speed
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": str(trainer.precision),
        "compile": speed.compile_mode if speed.compile else False,
        "channels_last": speed.channels_last,
        "fused_optimizer": speed.fused_on(device),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None,
    }


# trainer.precision -> the autocast dtype the plain loop mirrors it with.
AUTOCAST: dict[str, torch.dtype | None] = {"32-true": None, "bf16-mixed": torch.bfloat16}


def autocast_dtype(trainer: L.Trainer) -> torch.dtype | None:
    precision = str(trainer.precision)
    if precision not in AUTOCAST:
        raise UserInputError(
            f"the benchmark's plain loop mirrors trainer.precision {' or '.join(AUTOCAST)}, not {precision}"
        )
    return AUTOCAST[precision]


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_gpu_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# the project's path


class _BatchClock(L.Callback):
    """Times batches ``warmup`` .. end of the fit (from the start of the first timed batch to
    the end of the last)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if idx == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: Any, batch: Any, idx: int
    ) -> None:
        if idx >= self.warmup:
            self.images += len(batch[0])  # (images, labels)
            synchronize(self.device)
            self.end = time.perf_counter()


def project_rate(
    cfg: DictConfig, model: DCGAN, datamodule: ImageDataModule, device: torch.device, warmup: int, batches: int
) -> float:
    """Images/s of ``batches`` timed batches of ``trainer.fit`` on ``device``, built from
    ``cfg`` as train.py builds it (callbacks and logger as configured)."""
    from dcgan.cli import instantiate_node

    # ``device``, not the model's: the model sits on the CPU until fit moves it (and after
    # fit's teardown), and the clock must wait for the GPU's queued work.
    clock = _BatchClock(warmup, device)
    callbacks = [instantiate_node(c, n) for n, c in (cfg.get("callbacks") or {}).items() if c is not None]
    loggers = [instantiate_node(cfg.logger, "logger")] if cfg.get("logger") else []
    trainer = instantiate_node(
        cfg.trainer,
        "trainer",
        callbacks=[*callbacks, clock],
        logger=loggers,
        max_epochs=1,
        limit_train_batches=warmup + batches,
    )
    trainer.fit(model, datamodule=datamodule)
    return clock.images / (clock.end - clock.start)


# --------------------------------------------------------------------------------------------
# the plain PyTorch loop


def plain_rate(
    model: DCGAN,
    datamodule: ImageDataModule,
    device: torch.device,
    warmup: int,
    batches: int,
    speed: Speed,
    autocast: torch.dtype | None,
) -> float:
    """Images/s of the same training step written as a bare loop: copies of G and D (not
    compiled: ``nn.Module.compile`` is not copied), the same optimizer factories, losses,
    labels, batch size and in-memory uint8 data, and the same work per step (one G forward;
    D's weights frozen during G's backward; G updated every ``d_steps_per_g`` batches; the
    gradient penalty, R1, DiffAugment, class labels and the average of G's weights if the model
    has them), run with ``speed``
    and under ``autocast``."""
    g, d = copy.deepcopy(model.generator).to(device), copy.deepcopy(model.discriminator).to(device)
    speed.apply(g, d)
    assert model.g_optimizer is not None and model.d_optimizer is not None
    g_opt = speed.optimizer_factory(model.g_optimizer, device)(g.parameters())
    d_opt = speed.optimizer_factory(model.d_optimizer, device)(d.parameters())
    hp = model.hparams
    ema = EMA(g, hp.ema_decay, hp.ema_start) if hp.ema_decay > 0 else None
    assert datamodule.images is not None, "the benchmark needs the in-memory data path"
    images = datamodule.images.to(device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    b = datamodule.batch_size

    def batches_of(n: int) -> Iterator[torch.Tensor]:
        for _ in range(n):
            index = torch.randint(0, len(images), (b,), generator=generator).to(device)
            yield to_unit_range(images.index_select(0, index)).contiguous(memory_format=speed.memory_format)

    classes, augment = model.num_classes, model.augment

    def critic(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return d(augment(x), y)

    def step(real: torch.Tensor, i: int) -> None:
        update_g = (i + 1) % hp.d_steps_per_g == 0
        r1_due = hp.r1_weight > 0 and i % hp.r1_every == 0
        y = torch.randint(0, classes, (len(real),), device=device) if classes else None
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            z = torch.randn(len(real), hp.latent_dim, device=device)
            with torch.set_grad_enabled(update_g):
                fake = g(z, y)
            real = real.requires_grad_(r1_due)
            real_logits = critic(real, y)
            d_loss = discriminator_loss(hp.loss, real_logits, critic(fake.detach(), y), hp.real_label, hp.fake_label)
            if hp.gp_weight > 0:
                d_loss = d_loss + hp.gp_weight * gradient_penalty(lambda x: critic(x, y), real, fake.detach())
            if r1_due:
                d_loss = d_loss + hp.r1_weight * hp.r1_every * r1_penalty(real_logits, real)
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            if not update_g:
                return
            d.requires_grad_(False)  # G's step needs no gradients of D's weights (the module's
            g_loss = generator_loss(hp.loss, critic(fake, y))  # toggle_optimizer does the same)
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
            d.requires_grad_(True)
            if ema is not None:
                ema.update(g, hp.ema_start)

    for i, real in enumerate(batches_of(warmup)):
        step(real, i)
    synchronize(device)
    start = time.perf_counter()
    for i, real in enumerate(batches_of(batches), start=warmup):
        step(real, i)
    synchronize(device)
    return batches * b / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# data path, FID


def data_rate(datamodule: ImageDataModule, device: torch.device, batches: int) -> float:
    """Images/s of the training DataLoader, moved to ``device`` and scaled to [-1, 1]."""
    loader = datamodule.train_dataloader()
    count, start = 0, time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        moved = (images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        count += len(datamodule.on_after_batch_transfer(moved, 0)[0])
        if i + 1 == batches:
            break
    synchronize(device)
    return count / (time.perf_counter() - start)


def fid_records(
    cfg: DictConfig, model: DCGAN, device: torch.device, num_images: int, eval_samples: int | None
) -> dict[str, Any]:
    """The Inception network's images/s on generated images of the model's size, and one
    in-training evaluation (``eval_samples`` images; None: ``eval.num_samples`` as configured)."""
    extractor = InceptionFeatures(cfg.eval.weights, cfg.eval.batch_size).to(device)
    size, channels = model.hparams.image_size, model.hparams.channels
    images = torch.randint(0, 256, (num_images, channels, size, size), dtype=torch.uint8)
    extractor(images[: extractor.batch_size_on(device)])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    extractor(images)
    synchronize(device)
    features_per_s = num_images / (time.perf_counter() - start)
    baseline_per_s = _torchmetrics_default_rate(cfg.eval.weights, images, device)

    n = eval_samples or (
        FIDCallback.auto_num_samples(device) if cfg.eval.num_samples == "auto" else int(cfg.eval.num_samples)
    )
    # The reference side is computed once per dataset and cached, so it is not part of an
    # evaluation's cost; stand-in features of the right shape cost the same to compare.
    scorer = FIDScorer(extractor, torch.randn(n, FEATURE_DIM), n, n)
    z = latents(n, model.hparams.latent_dim, seed=0)
    labels = torch.arange(n) % model.num_classes if model.num_classes else None
    start = time.perf_counter()
    scorer.score(model.generate, z, labels)
    synchronize(device)
    fid_eval_s = time.perf_counter() - start
    # Precision and recall compare the same N generated features with N real ones (a k-NN
    # search, on the CPU): timed alone, it is their cost on top of FID.
    start = time.perf_counter()
    precision_recall(torch.randn(n, FEATURE_DIM), torch.randn(n, FEATURE_DIM))
    record = {
        "fid_features_images_per_s": round(features_per_s, 2),
        "fid_features_torchmetrics_default_images_per_s": round(baseline_per_s, 2),
        "fid_features_speedup": round(features_per_s / baseline_per_s, 2),
        "fid_batch_size": extractor.batch_size_on(device),
        "fid_eval_num_samples": n,
        "fid_eval_s": round(fid_eval_s, 2),
        "precision_recall_s": round(time.perf_counter() - start, 2),
    }
    if cfg.eval.classifier and classifies(cfg.dataset.name):
        record |= classifier_record(model, device, int(cfg.eval.classifier_num_samples))
    return record


def classifier_record(model: DCGAN, device: torch.device, n: int) -> dict[str, Any]:
    """The time of the classifier's scores of ``n`` generated images, as every in-training
    evaluation computes them. An untrained LeNet costs what the trained one does, and stand-in
    real images what the reference images do, so nothing is trained or cached."""
    classes = model.num_classes or 10
    classifier = Classifier(LeNet(classes).to(device).eval(), 0.0, ClassifierKey("bench"))
    real = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)
    scorer = ClassifierScorer(classifier, real, torch.full((classes,), n // classes))
    z = latents(n, model.hparams.latent_dim, seed=1)
    labels = torch.arange(n) % model.num_classes if model.num_classes else None
    start = time.perf_counter()
    scorer.score(model.generate, z, labels)
    synchronize(device)
    return {"classifier_eval_num_samples": n, "classifier_eval_s": round(time.perf_counter() - start, 2)}


def _torchmetrics_default_rate(weights: str | None, images: torch.Tensor, device: torch.device) -> float:
    """Images/s of the same Inception network as torchmetrics' FrechetInceptionDistance runs it
    by default: batches of 32, contiguous weights, under ``no_grad``: the baseline of the
    settings ``InceptionFeatures`` chose."""
    net = load_inception(weights).to(device)
    batch = 32
    with torch.no_grad():
        net(images[:batch].to(device).expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:batch].to(device))
        synchronize(device)
        start = time.perf_counter()
        for chunk in images.split(batch):
            chunk = chunk.to(device)
            net(chunk.expand(-1, 3, -1, -1).contiguous() if chunk.shape[1] == 1 else chunk)
        synchronize(device)
    return len(images) / (time.perf_counter() - start)


def forward_gflop(model: DCGAN) -> dict[str, float]:
    """GFLOP of one image through G's and D's forward passes (a multiply-add counts 2; a
    training step costs about 3x a forward: the backward pass takes about twice its FLOPs)."""
    flops = {}
    labels = torch.zeros(2, dtype=torch.long) if model.num_classes else None
    z = latents(2, model.hparams.latent_dim, seed=0)
    images = torch.zeros(2, model.hparams.channels, model.hparams.image_size, model.hparams.image_size)
    for name, net, x in (("g", model.generator, z), ("d", model.discriminator, images)):
        net = copy.deepcopy(net).cpu().eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(x, labels)
        flops[f"{name}_gflop_per_image"] = float(f"{counter.get_total_flops() / len(x) / 1e9:.4g}")
    return flops


# --------------------------------------------------------------------------------------------
# one size, in its own process (its own peak memory)


def bench_size(size: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    warmup, batches, rounds = args.warmup, args.batches, args.rounds
    with tempfile.TemporaryDirectory(prefix="dcgan-bench-") as out:
        overrides = [f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", *args.overrides]
        cfg = compose_experiment(size, Path(out), *overrides)
        from dcgan.train import build

        L.seed_everything(0, verbose=False)
        datamodule, model, trainer = build(cfg)
        device = torch.device(args.device)
        datamodule.trainer = trainer  # setup() decides where the data lives from the trainer
        datamodule.prepare_data()
        datamodule.setup("fit")
        chosen = [o.split("=", 1)[1] for o in args.overrides if o.startswith("experiment=")]
        base = {"size": size, "experiment": (chosen or [EXPERIMENTS[size]])[-1], "batch_size": datamodule.batch_size}
        base |= {"overrides": list(args.overrides)}
        shape = ("g_width", "d_width", "max_width", "g_upsample", "fc_width", "latent_dim")
        base |= {k: model.hparams[k] for k in shape}
        base |= forward_gflop(model)

        autocast = autocast_dtype(trainer)
        project, plain, baseline = [], [], []
        for _ in range(rounds):
            project.append(project_rate(cfg, model, datamodule, device, warmup, batches))
            model.to(device)
            plain.append(plain_rate(model, datamodule, device, warmup, batches, model.speed, autocast))
            if args.baseline:
                baseline.append(plain_rate(model, datamodule, device, warmup, batches, BASELINE, None))
        train = {
            "bench": "train",
            **base,
            "warmup": warmup,
            "timed_batches": batches,
            "rounds": rounds,
            "project_images_per_s": round(statistics.median(project), 2),
            "plain_images_per_s": round(statistics.median(plain), 2),
            "project_rounds": [round(r, 2) for r in project],
            "plain_rounds": [round(r, 2) for r in plain],
        }
        train["ratio"] = round(train["project_images_per_s"] / train["plain_images_per_s"], 3)
        if baseline:
            train["baseline_images_per_s"] = round(statistics.median(baseline), 2)
            train["baseline_rounds"] = [round(r, 2) for r in baseline]
            train["speedup"] = round(train["project_images_per_s"] / train["baseline_images_per_s"], 3)
        data = {"bench": "data", **base, "images_per_s": round(data_rate(datamodule, device, args.data_batches), 1)}
        data["ratio_to_training"] = round(data["images_per_s"] / train["project_images_per_s"], 1)
        records = [train, data]
        if not args.no_fid:
            fid = {"bench": "fid", **base, **fid_records(cfg, model, device, args.fid_images, args.fid_eval_samples)}
            records.append(fid)
        env = environment(device, model, trainer) | peak_memory_mb(device)
        return [r | env for r in records]


# --------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python tools/bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"warmup, batches, rounds = {QUICK} (default {FULL})")
    p.add_argument("--sizes", type=int, nargs="+", default=[28, 64, 128], choices=sorted(EXPERIMENTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--warmup", type=int, help="untimed batches before each timed stretch")
    p.add_argument("--batches", type=int, help="timed batches per round")
    p.add_argument("--rounds", type=int, help="project/plain alternations")
    p.add_argument("--data-batches", type=int, default=50, help="batches for the data-path rate")
    p.add_argument("--fid-images", type=int, help="images for the Inception rate (default 64, quick 32)")
    p.add_argument("--fid-eval-samples", type=int, help="N of the timed evaluation (default: as in training)")
    p.add_argument("--no-fid", action="store_true", help="skip the FID measurements (no Inception weights needed)")
    p.add_argument(
        "--baseline", action="store_true", help="also time the plain loop in float32, NCHW, uncompiled (speed-up)"
    )
    p.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every size, e.g. dataset.batch_size=64")
    # Overrides are told apart by their '=', so that they may follow --sizes' list (--sizes 64
    # experiment=fashion64), which argparse would otherwise read as one more size.
    argv = sys.argv[1:] if argv is None else argv
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = p.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    warmup, batches, rounds = QUICK if args.quick else FULL
    args.warmup = args.warmup if args.warmup is not None else warmup
    args.batches = args.batches if args.batches is not None else batches
    args.rounds = args.rounds if args.rounds is not None else rounds
    args.fid_images = args.fid_images or (32 if args.quick else 64)
    if args.quick and args.fid_eval_samples is None:
        args.fid_eval_samples = 100
    for name in ("warmup", "batches", "rounds", "data_batches", "fid_images"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:  # one size, in this process; records to a file, as the
        # progress bar also writes to stdout
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
        try:
            records = bench_size(args.sizes[0], args)
        except ReportedError as e:
            exit_with(e)
        args.child.write_text("".join(json.dumps(r) + "\n" for r in records))
        return
    records = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "records.jsonl"
            result = subprocess.run(
                [sys.executable, __file__, *child_args(args, size, out)],
                capture_output=True,
                text=True,
                env=os.environ,
            )
            if result.returncode != 0:
                sys.stderr.write(result.stderr[-4000:])
                raise SystemExit(f"the benchmark of size {size} failed (exit {result.returncode})")
            lines = out.read_text().splitlines()
        for line in lines:
            records.append(json.loads(line))
            print(line, flush=True)
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a") as f:
                    f.write(line + "\n")
    print(table(records), file=sys.stderr)


def child_args(args: argparse.Namespace, size: int, out: Path) -> list[str]:
    """The command line that benchmarks one size in a child process, writing to ``out``."""
    argv = ["--child", str(out), "--sizes", str(size), "--device", args.device, "--warmup", str(args.warmup)]
    argv += ["--batches", str(args.batches), "--rounds", str(args.rounds), "--data-batches", str(args.data_batches)]
    argv += ["--fid-images", str(args.fid_images)]
    if args.fid_eval_samples is not None:
        argv += ["--fid-eval-samples", str(args.fid_eval_samples)]
    argv += ["--no-fid"] if args.no_fid else []
    argv += ["--baseline"] if args.baseline else []
    return [*argv, *args.overrides]


def table(records: list[dict[str, Any]]) -> str:
    """The records as the README's Markdown table."""
    by_size: dict[int, dict[str, Any]] = {}
    for r in records:
        by_size.setdefault(r["size"], {}).update({f"{r['bench']}.{k}": v for k, v in r.items()})
    baseline = any("train.baseline_images_per_s" in r for r in by_size.values())
    columns = ["size", "batch", "widths G/D", "project img/s", "plain img/s", "ratio"]
    columns += ["fp32 NCHW plain img/s", "speed-up"] if baseline else []
    columns += ["data img/s", "FID net img/s", "FID eval", "+ precision/recall", "classifier eval", "peak memory"]
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for size, r in sorted(by_size.items()):
        fid_eval = f"{r['fid.fid_eval_s']} s (N={r['fid.fid_eval_num_samples']})" if "fid.fid_eval_s" in r else "-"
        prc = f"{r['fid.precision_recall_s']} s" if "fid.precision_recall_s" in r else "-"
        classifier = (
            f"{r['fid.classifier_eval_s']} s (N={r['fid.classifier_eval_num_samples']})"
            if "fid.classifier_eval_s" in r
            else "-"
        )
        memory = r.get("train.peak_rss_mb") or r.get("train.peak_gpu_allocated_mb")
        fid_net = (
            f"{r['fid.fid_features_images_per_s']} ({r['fid.fid_features_speedup']}x)"
            if "fid.fid_features_images_per_s" in r
            else "-"
        )
        cells = [str(size), str(r["train.batch_size"]), f"{r['train.g_width']}/{r['train.d_width']}"]
        cells += [
            f"{r['train.project_images_per_s']:.0f}",
            f"{r['train.plain_images_per_s']:.0f}",
            f"{r['train.ratio']:.3f}",
        ]
        if baseline:
            cells += [
                f"{r.get('train.baseline_images_per_s', float('nan')):.0f}",
                f"{r.get('train.speedup', float('nan')):.2f}x",
            ]
        cells += [f"{r['data.images_per_s']:.0f}", fid_net, fid_eval, prc, classifier, f"{memory} MB"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
