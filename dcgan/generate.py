"""``generate(cfg)``: the modes of generate.py, each writing files into one output folder.

Every image comes from seeded latents (``dcgan.sampling.latents``): the same seed gives the same
images, whatever the batch size, and sample *i* of a seed is the same in every mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from dcgan.errors import UserInputError
from dcgan.files import NpzWriter, atomic_dir, atomic_path, save_gif, save_png
from dcgan.images import grid, to_pil
from dcgan.metrics import FIDScorer, InceptionFeatures, reference_datamodule, reference_features
from dcgan.module import DCGAN
from dcgan.report import write_progress, write_report
from dcgan.run import Checkpoint, Run
from dcgan.sampling import (
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


def _int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserInputError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UserInputError(f"{name}={value!r} must be a number > 0")
    return float(value)


class Generation:
    """A loaded generator with the settings every image mode shares; writes into ``out_dir``."""

    def __init__(self, cfg: DictConfig, checkpoint: Checkpoint, out_dir: Path) -> None:
        self.seed = _int(cfg.seed, "seed", 0)
        self.batch_size = _int(cfg.batch_size, "batch_size", 1)
        self.model: DCGAN = checkpoint.model(resolve_device(str(cfg.device)))
        self.latent_dim: int = self.model.hparams.latent_dim
        self.image_size: int = self.model.hparams.image_size
        self.out_dir = out_dir
        self.tag = checkpoint.path.stem  # best, last, ...: files of different checkpoints stay apart
        log.info("generator of %s on %s", checkpoint.path, self.model.device)

    def images(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, D) -> uint8 images (N, C, S, S) on the CPU."""
        return generate_uint8(self.model, z, self.batch_size)

    def write_grid(self, z: torch.Tensor, nrow: int, name: str) -> Path:
        return save_png(grid(self.images(z), nrow), self.out_dir / name)

    @property
    def gif_scale(self) -> int:
        return max(1, round(GIF_TARGET_PX / self.image_size))

    # -- modes -------------------------------------------------------------------------------

    def grid(self, cfg: DictConfig) -> list[Path]:
        n = _int(cfg.num_images, "grid.num_images", 1)
        nrow = _int(cfg.nrow, "grid.nrow", 1) if cfg.nrow is not None else math.ceil(math.sqrt(n))
        return [self.write_grid(latents(n, self.latent_dim, self.seed), nrow, f"grid-{self.tag}-seed{self.seed}.png")]

    def samples(self, cfg: DictConfig) -> list[Path]:
        n = _int(cfg.num_images, "samples.num_images", 1)
        if not (cfg.png or cfg.npz):
            raise UserInputError("samples.png=false and samples.npz=false: nothing to write; enable one of them")
        name = f"samples-{self.tag}-seed{self.seed}"
        channels = self.model.hparams.channels
        shape = (n, self.image_size, self.image_size, channels)
        digits = max(6, len(str(n - 1)))
        folder, npz = self.out_dir / name, self.out_dir / f"{name}.npz"
        start_time = last_log = time.perf_counter()
        # Batch by batch into a temporary folder / npz that replace the old ones only when complete.
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_dir(folder)) if cfg.png else None
            writer = stack.enter_context(NpzWriter(npz, shape)) if cfg.npz else None
            for start in range(0, n, self.batch_size):
                images = self.images(latents(min(self.batch_size, n - start), self.latent_dim, self.seed, start))
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
        steps = _int(cfg.steps, "interpolate.steps", 2)
        methods = ["linear", "slerp"] if cfg.method == "both" else [str(cfg.method)]
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
            count = _int(cfg.points, "interpolate.points", 2)
            points = latents(count, self.latent_dim, self.seed)  # the first images of `mode=grid`
            ends = f"seed{self.seed}x{count}"
        written = []
        for method in methods:
            path = interpolation_path(points, steps, method, closed=bool(cfg.closed))  # (segments, steps, D)
            images = self.images(path.flatten(0, 1)).unflatten(0, path.shape[:2])  # (segments, steps, C, S, S)
            stem = f"interpolate-{self.tag}-{ends}-{method}"
            written.append(save_png(grid(images.flatten(0, 1), nrow=steps), self.out_dir / f"{stem}.png"))
            # Frames along the whole path; the joints between segments appear once.
            frames = [image for row in images for image in row[:-1]]
            if not cfg.closed:
                frames.append(images[-1, -1])  # closed: the last frame would repeat the first
            frame_ms = _int(cfg.frame_ms, "interpolate.frame_ms", 1)
            written.append(
                save_gif([to_pil(f) for f in frames], self.out_dir / f"{stem}.gif", frame_ms, self.gif_scale)
            )
        return written

    def explore(self, cfg: DictConfig) -> list[Path]:
        index = _int(cfg.index, "explore.index", 0)
        z = latents(1, self.latent_dim, self.seed, start=index)[0]  # image `index` of `mode=grid`
        if isinstance(cfg.dims, int) and not isinstance(cfg.dims, bool):
            dims = list(range(min(_int(cfg.dims, "explore.dims", 1), self.latent_dim)))
        elif isinstance(cfg.dims, ListConfig) and cfg.dims and all(isinstance(d, int) for d in cfg.dims):
            dims = list(cfg.dims)
        else:
            raise UserInputError(
                f"explore.dims={cfg.dims} must be a count (e.g. 8) or a list of dimensions (e.g. [0,5])"
            )
        bad = [d for d in dims if not 0 <= d < self.latent_dim]
        if bad:
            raise UserInputError(f"explore.dims {bad} are outside the latent's 0..{self.latent_dim - 1}")
        steps = _int(cfg.steps, "explore.steps", 2)
        value_range = _positive(cfg.range, "explore.range")
        stem = f"explore-{self.tag}-seed{self.seed}-{index}"
        varied = vary_dimensions(z, dims, value_range, steps)  # (dims, steps, D)
        written = [self.write_grid(varied.flatten(0, 1), steps, f"{stem}-dims.png")]
        walk_steps = _int(cfg.walk_steps, "explore.walk_steps", 2)
        walk = random_walk(z, walk_steps, _positive(cfg.walk_step_size, "explore.walk_step_size"), self.seed)
        written.append(self.write_grid(walk, math.ceil(math.sqrt(walk_steps)), f"{stem}-walk.png"))
        frames = [to_pil(f) for f in self.images(walk)]
        frame_ms = _int(cfg.frame_ms, "explore.frame_ms", 1)
        written.append(save_gif(frames, self.out_dir / f"{stem}-walk.gif", frame_ms, self.gif_scale))
        return written


def score(cfg: DictConfig, run: Run, checkpoint: Checkpoint) -> Path:
    """FID (and KID) of ``fid.num_samples`` images of the checkpoint's generator against the
    reference split of the dataset it was trained on; prints the record as one JSON line and
    writes it to ``fid.out`` (default ``<run dir>/eval/fid-<checkpoint>-n<N>-<split>.json``)."""
    settings = cfg.fid
    num_samples = _int(settings.num_samples, "fid.num_samples", 2)
    dataset = checkpoint.data.get("datamodule_hyper_parameters")
    if not dataset:
        raise UserInputError(f"{checkpoint.path} does not record the dataset it was trained on; it cannot be scored")
    if cfg.data_dir is not None and dataset["name"] != "folder":
        dataset = dict(dataset) | {"root": cfg.data_dir}
    device = resolve_device(str(cfg.device))
    model = checkpoint.model(device)
    extractor = InceptionFeatures(settings.weights, settings.batch_size).to(device)
    reference = reference_datamodule(dataset, settings.reference_split)
    features, key, _ = reference_features(reference, settings.reference_samples, extractor, settings.cache_dir)
    start = time.perf_counter()
    scorer = FIDScorer(extractor, features, len(features), num_samples, kid=settings.kid)
    result = scorer.score(model.generate, latents(num_samples, model.hparams.latent_dim, settings.seed))
    out = Path(settings.out or run.directory / "eval" / f"fid-{checkpoint.path.stem}-n{num_samples}-{key.split}.json")
    record = {
        "checkpoint": str(checkpoint.path.resolve()),
        "epochs_trained": checkpoint.epochs_trained,
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
    if cfg.mode not in MODES:
        raise UserInputError(f"mode={cfg.mode!r} is not known; choose one of {', '.join(MODES)}")
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
            _int(p.frame_ms, "progress.frame_ms", 1),
            _int(p.strip_frames, "progress.strip_frames", 1),
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
