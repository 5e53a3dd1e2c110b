"""``generate(cfg)``: the modes of generate.py, each writing files into one output folder.

- ``grid``, ``samples``, ``interpolate``, ``explore``: images of a checkpoint's generator
  (``Generation``). Every image comes from seeded latents (``dcgan.sampling.latents``): the
  same seed gives the same images, whatever the batch size, and sample *i* of a seed is the
  same in every mode.
- ``fid``: FID (and KID) of a checkpoint (``score``).
- ``report``, ``progress``: plots of a run's logs and its epoch grids as an animation
  (``dcgan.report``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from dcgan.classifier import ClassifierKey, ClassifierScorer, classifies, load_classifier, reference_scorer
from dcgan.cli import check_added_settings, check_sections, instantiate_node
from dcgan.datasets import ImageDataModule
from dcgan.errors import UserInputError, choice, integer, positive_number, require
from dcgan.files import NpzWriter, atomic_dir, atomic_path, save_gif, save_png
from dcgan.images import grid, to_pil
from dcgan.metrics import FIDScorer, InceptionFeatures, min_samples, reference_features
from dcgan.module import DCGAN
from dcgan.report import write_progress, write_report
from dcgan.run import Checkpoint, Run
from dcgan.sampling import (
    class_labels,
    class_rows,
    generate_uint8,
    interpolation_path,
    latents,
    random_walk,
    resolve_device,
    vary_dimensions,
)

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("grid", "samples", "interpolate", "explore", "progress", "report", "fid")
# GIF frames of single images are scaled up to about this many pixels (nearest neighbour).
GIF_TARGET_PX = 128


def _flag(value: object, key: str) -> bool:
    require(isinstance(value, bool), key, value, "must be true or false")
    return bool(value)


def file_tag(checkpoint: Checkpoint, model: DCGAN, ema: bool) -> str:
    """The checkpoint's name (best, last, ...), with ``-raw`` when the trained G of a checkpoint
    that also holds an average of its weights draws: files of different checkpoints and of the
    two generators stay apart."""
    return checkpoint.path.stem + ("" if ema or model.generator_ema is None else "-raw")


class Generation:
    """A loaded generator with the settings every image mode shares; writes into ``out_dir``."""

    def __init__(self, cfg: DictConfig, checkpoint: Checkpoint, out_dir: Path) -> None:
        self.seed = integer(cfg.seed, "seed", 0)
        self.batch_size = integer(cfg.batch_size, "batch_size", 1)
        self.ema = _flag(cfg.ema, "ema")
        self.model: DCGAN = checkpoint.model(resolve_device(str(cfg.device)))
        self.latent_dim: int = self.model.hparams.latent_dim
        self.image_size: int = self.model.hparams.image_size
        self.label = requested_class(cfg, self.model)
        self.out_dir = out_dir
        self.tag = file_tag(checkpoint, self.model, self.ema)
        log.info("generator of %s on %s", checkpoint.path, self.model.device)

    def images(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (N, D) -> uint8 images (N, C, S, S) on the CPU; a conditional model draws
        ``labels`` (N,), else the requested class (``class=``)."""
        if labels is None and self.model.num_classes:
            if self.label is None:
                raise UserInputError(
                    "this checkpoint's generator is class-conditional: this mode draws one class, "
                    f"so add class=<0..{self.model.num_classes - 1}>"
                )
            labels = torch.full((len(z),), self.label)
        return generate_uint8(self.model, z, labels, self.batch_size, self.ema)

    @property
    def class_tag(self) -> str:
        return f"-class{self.label}" if self.label is not None else ""

    def write_grid(self, z: torch.Tensor, nrow: int, name: str, labels: torch.Tensor | None = None) -> Path:
        return save_png(grid(self.images(z, labels), nrow), self.out_dir / name)

    @property
    def gif_scale(self) -> int:
        return max(1, round(GIF_TARGET_PX / self.image_size))

    # -- modes -------------------------------------------------------------------------------

    def grid(self, cfg: DictConfig) -> list[Path]:
        n = integer(cfg.num_images, "grid.num_images", 1)
        nrow = integer(cfg.nrow, "grid.nrow", 1) if cfg.nrow is not None else None
        classes = self.model.num_classes
        if classes and self.label is None:
            # One row per class, one latent per column: the same z drawn as every class.
            z, labels = class_rows(latents(nrow or classes, self.latent_dim, self.seed), classes)
            return [self.write_grid(z, nrow or classes, f"grid-{self.tag}-seed{self.seed}-classes.png", labels)]
        z = latents(n, self.latent_dim, self.seed)
        name = f"grid-{self.tag}-seed{self.seed}{self.class_tag}.png"
        return [self.write_grid(z, nrow or math.ceil(math.sqrt(n)), name)]

    def samples(self, cfg: DictConfig) -> list[Path]:
        n = integer(cfg.num_images, "samples.num_images", 1)
        if not (cfg.png or cfg.npz):
            raise UserInputError("samples.png=false and samples.npz=false: nothing to write; enable one of them")
        name = f"samples-{self.tag}-seed{self.seed}{self.class_tag}"
        channels = self.model.hparams.channels
        # A conditional model draws class= or else the training set's class proportions; its
        # labels go beside the images (labels.csv in the folder, array `labels` in the npz).
        labels = sample_labels(self.model, n, self.seed) if self.label is None else torch.full((n,), self.label)
        shape = (n, self.image_size, self.image_size, channels)
        digits = max(6, len(str(n - 1)))
        folder, npz = self.out_dir / name, self.out_dir / f"{name}.npz"
        start_time = last_log = time.perf_counter()
        # Batch by batch into a temporary folder / npz that replace the old ones only when complete.
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_dir(folder)) if cfg.png else None
            stored = labels.numpy().astype(np.int64) if labels is not None else None
            writer = stack.enter_context(NpzWriter(npz, shape, stored)) if cfg.npz else None
            if tmp is not None and labels is not None:
                with (tmp / "labels.csv").open("w", newline="") as f:
                    csv.writer(f).writerows(
                        [("file", "label")] + [(f"{i:0{digits}d}.png", int(y)) for i, y in enumerate(labels)]
                    )
            for start in range(0, n, self.batch_size):
                count = min(self.batch_size, n - start)
                batch_labels = labels[start : start + count] if labels is not None else None
                images = self.images(latents(count, self.latent_dim, self.seed, start), batch_labels)
                if tmp is not None:
                    for offset, image in enumerate(images):
                        to_pil(image).save(tmp / f"{start + offset:0{digits}d}.png", format="png")
                if writer is not None:
                    writer.write(images)
                done = start + len(images)
                if time.perf_counter() - last_log > 10 or done == n:
                    rate = done / (time.perf_counter() - start_time)
                    log.info("samples: %d/%d images (%.0f images/s)", done, n, rate)
                    last_log = time.perf_counter()
        return [p for p, on in ((folder, cfg.png), (npz, cfg.npz)) if on]

    def interpolate(self, cfg: DictConfig) -> list[Path]:
        steps = integer(cfg.steps, "interpolate.steps", 2)
        if cfg.classes is not None:
            return self.interpolate_classes(cfg, steps)
        method = choice(cfg.method, "interpolate.method", ("linear", "slerp", "both"))
        methods = ["linear", "slerp"] if method == "both" else [method]
        if cfg.seeds is not None:
            seeds = cfg.seeds
            if not isinstance(seeds, ListConfig) or len(seeds) < 2 or not all(isinstance(s, int) for s in seeds):
                raise UserInputError(
                    f"interpolate.seeds={seeds} must be a list of 2 or more integer seeds, e.g. interpolate.seeds=[3,7]"
                )
            # Each seed's first latent: the top-left image of `mode=grid seed=<s>`.
            points = torch.cat([latents(1, self.latent_dim, s) for s in seeds])
            ends = "seeds" + "-".join(str(s) for s in seeds)
        else:
            count = integer(cfg.points, "interpolate.points", 2)
            points = latents(count, self.latent_dim, self.seed)  # the first images of `mode=grid`
            ends = f"seed{self.seed}x{count}"
        written = []
        for method in methods:
            path = interpolation_path(points, steps, method, closed=bool(cfg.closed))  # (segments, steps, D)
            images = self.images(path.flatten(0, 1)).unflatten(0, path.shape[:2])  # (segments, steps, C, S, S)
            written += self._write_path(images, f"interpolate-{self.tag}-{ends}{self.class_tag}-{method}", cfg)
        return written

    def interpolate_classes(self, cfg: DictConfig, steps: int) -> list[Path]:
        """From class to class of ``interpolate.classes`` at one latent (the seed's first), by
        mixing the classes' conditional BatchNorm parameters."""
        classes = self.model.num_classes
        names = cfg.classes
        if not classes:
            raise UserInputError("interpolate.classes needs a class-conditional checkpoint (model.conditional=true)")
        if not isinstance(names, ListConfig) or len(names) < 2:
            raise UserInputError(f"interpolate.classes={names} must be a list of 2 or more classes, e.g. [3,8]")
        indices = [class_index(c, self.model, "interpolate.classes") for c in names]
        onehot = torch.eye(classes)[indices]
        path = interpolation_path(onehot, steps, "linear", closed=bool(cfg.closed))  # (segments, steps, classes)
        z = latents(1, self.latent_dim, self.seed).expand(path.shape[0] * steps, -1)
        images = self.images(z, path.flatten(0, 1)).unflatten(0, path.shape[:2])
        stem = f"interpolate-{self.tag}-seed{self.seed}-classes{'-'.join(map(str, indices))}"
        return self._write_path(images, stem, cfg)

    def _write_path(self, images: torch.Tensor, stem: str, cfg: DictConfig) -> list[Path]:
        """A grid PNG of paths (segments, steps, C, S, S), one row per segment, and a GIF along them."""
        written = [save_png(grid(images.flatten(0, 1), nrow=images.shape[1]), self.out_dir / f"{stem}.png")]
        # Frames along the whole path; the joints between segments appear once.
        frames = [image for row in images for image in row[:-1]]
        if not cfg.closed:
            frames.append(images[-1, -1])  # closed: the last frame would repeat the first
        frame_ms = integer(cfg.frame_ms, "interpolate.frame_ms", 1)
        written.append(save_gif([to_pil(f) for f in frames], self.out_dir / f"{stem}.gif", frame_ms, self.gif_scale))
        return written

    def explore(self, cfg: DictConfig) -> list[Path]:
        index = integer(cfg.index, "explore.index", 0)
        z = latents(1, self.latent_dim, self.seed, start=index)[0]  # image `index` of `mode=grid`
        if isinstance(cfg.dims, int) and not isinstance(cfg.dims, bool):
            dims = list(range(min(integer(cfg.dims, "explore.dims", 1), self.latent_dim)))
        elif isinstance(cfg.dims, ListConfig) and cfg.dims and all(isinstance(d, int) for d in cfg.dims):
            dims = list(cfg.dims)
        else:
            raise UserInputError(
                f"explore.dims={cfg.dims} must be a count (e.g. 8) or a list of dimensions (e.g. [0,5])"
            )
        bad = [d for d in dims if not 0 <= d < self.latent_dim]
        if bad:
            raise UserInputError(f"explore.dims {bad} are outside the latent's 0..{self.latent_dim - 1}")
        steps = integer(cfg.steps, "explore.steps", 2)
        value_range = positive_number(cfg.range, "explore.range")
        stem = f"explore-{self.tag}-seed{self.seed}-{index}{self.class_tag}"
        varied = vary_dimensions(z, dims, value_range, steps)  # (dims, steps, D)
        written = [self.write_grid(varied.flatten(0, 1), steps, f"{stem}-dims.png")]
        walk_steps = integer(cfg.walk_steps, "explore.walk_steps", 2)
        walk = random_walk(z, walk_steps, positive_number(cfg.walk_step_size, "explore.walk_step_size"), self.seed)
        written.append(self.write_grid(walk, math.ceil(math.sqrt(walk_steps)), f"{stem}-walk.png"))
        frames = [to_pil(f) for f in self.images(walk)]
        frame_ms = integer(cfg.frame_ms, "explore.frame_ms", 1)
        written.append(save_gif(frames, self.out_dir / f"{stem}-walk.gif", frame_ms, self.gif_scale))
        return written


def class_index(label: object, model: DCGAN, key: str) -> int:
    """A class of the checkpoint's generator by its index (``7``) or, where the checkpoint keeps
    the data's class names (a folder's subfolders, Fashion-MNIST's), its name (``smileys_emotion``)."""
    names = model.class_names or []
    if isinstance(label, str) and label in names:
        return names.index(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < model.num_classes:
        return label
    accepted = f"an index 0..{model.num_classes - 1}" + (f" or a name, one of {', '.join(names)}" if names else "")
    raise UserInputError(f"{key}={label} is not a class of the checkpoint: {accepted}")


def requested_class(cfg: DictConfig, model: DCGAN) -> int | None:
    """``class=``, checked against the checkpoint's classes (None: not given)."""
    label = cfg.get("class")
    if label is None:
        return None
    if not model.num_classes:
        raise UserInputError(f"class={label}: this checkpoint's generator is unconditional; leave out class=")
    return class_index(label, model, "class")


def sample_labels(model: DCGAN, n: int, seed: int) -> torch.Tensor | None:
    """``n`` labels in the training set's class proportions for a conditional model, else None."""
    return class_labels(n, model.class_counts.cpu(), seed) if model.num_classes else None


def classifier_scores(
    reference: ImageDataModule, settings: DictConfig, run: Run, device: torch.device
) -> ClassifierScorer:
    """Class coverage, conditional accuracy and fid_lenet against the FID's real images
    (``dcgan.classifier``), by the classifier the run was evaluated with in training (cached;
    trained on first use)."""
    has_config = (run.directory / ".hydra" / "config.yaml").is_file()
    train_samples = OmegaConf.select(run.config, "eval.classifier_train_samples") if has_config else None
    key = ClassifierKey(reference.name, reference.image_size, train_samples=train_samples)
    classifier = load_classifier(reference.name, reference.root, settings.cache_dir, key)  # type: ignore[attr-defined]
    classifier.net.to(device)
    return reference_scorer(classifier, reference, settings.reference_samples)


def score(cfg: DictConfig, run: Run, checkpoint: Checkpoint) -> Path:
    """FID (and KID) of ``fid.num_samples`` images of the checkpoint's generator against the
    reference split of the dataset it was trained on; prints the record as one JSON line and
    writes it to ``fid.out`` (default ``<run dir>/eval/fid-<checkpoint>-n<N>-<split>.json``)."""
    settings = cfg.fid
    with_prc = _flag(settings.precision_recall, "fid.precision_recall")
    num_samples, (least, why) = settings.num_samples, min_samples(with_prc, "fid")
    ok = isinstance(num_samples, int) and not isinstance(num_samples, bool) and num_samples >= least
    require(ok, "fid.num_samples", num_samples, f"must be an integer >= {least}{why}")
    if cfg.get("class") is not None:
        raise UserInputError("mode=fid scores all classes in the training set's proportions; leave out class=")
    dataset = dict(checkpoint.data.get("datamodule_hyper_parameters") or {})
    if "_target_" not in dataset:
        raise UserInputError(f"{checkpoint.path} does not record the dataset it was trained on; it cannot be scored")
    if cfg.data_dir is not None and "root" in dataset:  # MNIST and Fashion-MNIST
        dataset["root"] = cfg.data_dir
    device = resolve_device(str(cfg.device))
    model = checkpoint.model(device)
    extractor = InceptionFeatures(settings.weights, settings.batch_size, section="fid").to(device)
    reference = instantiate_node(dataset, "dataset").reference(settings.reference_split)
    features, key, _ = reference_features(reference, settings.reference_samples, extractor, settings.cache_dir)
    start = time.perf_counter()
    prc_real = features if with_prc else None
    scorer = FIDScorer(extractor, features, len(features), num_samples, kid=settings.kid, prc_real=prc_real)
    ema = _flag(cfg.ema, "ema")
    draw = lambda z, y=None: model.generate(z, y, ema=ema)  # noqa: E731
    z, labels = (
        latents(num_samples, model.hparams.latent_dim, settings.seed),
        sample_labels(model, num_samples, settings.seed),
    )
    result = scorer.score(draw, z, labels)
    if _flag(settings.classifier, "fid.classifier") and classifies(dataset.get("name")):
        result |= classifier_scores(reference, settings, run, device).score(draw, z, labels)
    name = f"fid-{file_tag(checkpoint, model, ema)}-n{num_samples}-{key.split}.json"
    out = Path(settings.out or run.directory / "eval" / name)
    record = {
        "checkpoint": str(checkpoint.path.resolve()),
        "epochs_trained": checkpoint.epochs_trained,
        "generator": "ema" if ema and model.generator_ema is not None else "raw",
        **({"labels": "training proportions"} if model.num_classes else {}),
        **result,
        "num_samples": num_samples,
        "num_reference": len(features),
        "reference": asdict(key),
        "seed": settings.seed,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 2),
    }
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record | {"out": str(out.resolve())}))
    print(f"Wrote {out.resolve()}", file=sys.stderr)
    return out


def generate(cfg: DictConfig) -> list[Path]:
    """Run ``cfg.mode``; returns the files and folders written (``fid``: the JSON file) and
    prints where they are."""
    check_added_settings(cfg)
    check_sections(cfg, ("grid", "samples", "interpolate", "explore", "progress", "fid"))
    choice(cfg.mode, "mode", MODES)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserInputError(
            f"required setting(s) not given: {', '.join(missing)}, e.g. checkpoint=outputs/<exp>/<run>"
        )
    run = Run.of(cfg.checkpoint)
    if cfg.mode == "fid":
        return [score(cfg, run, run.checkpoint(cfg.checkpoint))]

    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else run.directory / "generated"
    if cfg.mode == "progress":
        p = cfg.progress
        written = write_progress(
            run.directory,
            out_dir,
            integer(p.frame_ms, "progress.frame_ms", 1),
            integer(p.strip_frames, "progress.strip_frames", 1),
        )
    elif cfg.mode == "report":
        written = write_report(run.directory, out_dir)
    else:
        generation = Generation(cfg, run.checkpoint(cfg.checkpoint), out_dir)
        mode: Callable[[DictConfig], list[Path]] = getattr(generation, cfg.mode)
        written = mode(cfg[cfg.mode])
    print(f"Wrote {len(written)} {'file' if len(written) == 1 else 'files'} to {out_dir.resolve()}:")
    for path in written:
        print(f"  {path.relative_to(out_dir)}{'/' if path.is_dir() else ''}")
    return written
