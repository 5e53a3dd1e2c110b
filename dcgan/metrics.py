"""FID (and KID) of generated images against cached features of real images.

Protocol (as the published GAN tables, e.g. Lucic et al. 2018): 2048-d pool features of the
TensorFlow FID Inception network (release 2015-12-05, via torch-fidelity/torchmetrics), images
as uint8 RGB resized to 299x299 with the original FID code's bilinear resize (no antialiasing),
generated images against a split of the training dataset (the test split by default).

The real side is computed once per reference set and cached on disk as a (N, 2048) feature
matrix, keyed by everything that changes it; the metric objects (torchmetrics) then receive
features, not images, through a pass-through "feature extractor", so the Inception network runs
once per image however many metrics are computed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.kid import KernelInceptionDistance

from dcgan.datasets import ImageDataModule
from dcgan.errors import UserInputError, require
from dcgan.files import atomic_path
from dcgan.images import to_uint8

log = logging.getLogger(__name__)

FEATURE_DIM = 2048
# Names the network behind torchmetrics' own download (torch-fidelity's release file).
DOWNLOADED_WEIGHTS = "torch-fidelity/weights-inception-2015-12-05-6726825d"


def weights_help(section: str) -> str:
    """What to do about missing or wrong FID weights, in the settings of the script that asked:
    ``eval`` (train.py, which can also train without FID) or ``fid`` (generate.py)."""
    off = "; or train without FID: eval.fid=false" if section == "eval" else ""
    return (
        f"set {section}.weights=<file>, or the DCGAN_FID_WEIGHTS environment variable, to a local copy of the FID "
        "Inception weights (inception-2015-12-05, torch-fidelity format, e.g. "
        f"weights-inception-2015-12-05-6726825d.pth){off}"
    )


# The weights files FID may be computed with, by sha256: with other weights, FID is a number
# no published table and no other run can be compared with. The release file's hash is the one
# published by its users (its first 8 digits are the file name's, torch hub's naming rule); the
# features-only file (../shared/weights) has the classification layer zero-filled, which FID
# and KID do not use.
KNOWN_WEIGHTS = {
    "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2": "weights-inception-2015-12-05-6726825d.pth",
    "0a714eca5933519ab636d26f170d06967513542240c88800f96ba23f7d533cda": "inception-2015-12-05-fid-features-only.pth",
}


# --------------------------------------------------------------------------------------------
# the feature network


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_identity(weights: str | None) -> str:
    """A name for the feature network's weights that changes when the weights do."""
    if weights is None:
        return DOWNLOADED_WEIGHTS
    stat = Path(weights).stat()
    return f"sha256:{_file_digest(str(weights), stat.st_size, stat.st_mtime_ns)[:16]}"


def load_inception(weights: str | None, section: str = "eval") -> NoTrainInceptionV3:
    """The FID Inception network, from a local weights file or torchmetrics' download. Errors
    name the settings of ``section`` (``weights_help``)."""
    if weights is None:
        try:
            return NoTrainInceptionV3("inception-v3-compat", [str(FEATURE_DIM)], None, antialias=False)
        except (URLError, OSError, RuntimeError) as e:
            raise UserInputError(
                f"the FID Inception weights could not be downloaded ({type(e).__name__}: {e}); {weights_help(section)}"
            ) from e
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserInputError(f"FID weights file {path} does not exist; {weights_help(section)}")
    stat = path.stat()
    digest = _file_digest(str(path), stat.st_size, stat.st_mtime_ns)
    if digest not in KNOWN_WEIGHTS:
        known = " or ".join(f"{name} (sha256 {sha[:8]}...)" for sha, name in KNOWN_WEIGHTS.items())
        raise UserInputError(
            f"FID weights file {path} (sha256 {digest[:8]}...) is not the FID Inception weights: a "
            f"different, truncated or corrupt file. Expected {known}; {weights_help(section)}"
        )
    # A known file: torch-fidelity's own loading (weights_only=False) runs no unknown code.
    return NoTrainInceptionV3("inception-v3-compat", [str(FEATURE_DIM)], str(path), antialias=False)


@contextlib.contextmanager
def full_precision_convolutions() -> Iterator[None]:
    """cuDNN convolutions in full float32 inside, not TF32 (torch's default for convolutions on
    Ampere and later GPUs, with 10 of float32's 23 mantissa bits), so FID features do not depend
    on the GPU generation and match a CPU's up to summation order. (The features-only network
    has no matmul: its pool features precede the classifier.)"""
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9; mixing it with
        saved = conv.fp32_precision  # the legacy allow_tf32 flag raises there
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = saved
    else:
        saved_flag = cudnn.allow_tf32
        cudnn.allow_tf32 = False
        try:
            yield
        finally:
            cudnn.allow_tf32 = saved_flag


class InceptionFeatures(nn.Module):
    """uint8 images (N, C, H, W), C = 1 or 3, -> 2048-d FID features (N, 2048) float32.

    Runs under ``inference_mode`` with channels-last weights and without TF32, in batches of
    ``batch_size``; ``"auto"`` takes 16 on a CPU (on 2 cores: 14.6 images/s, vs 9 at batch 32
    without channels-last) and 250 on a GPU. ``images_processed`` counts the images it has seen, so
    callers can check that cached features are not recomputed.
    """

    def __init__(self, weights: str | None, batch_size: int | str, section: str = "eval") -> None:
        super().__init__()
        ok = batch_size == "auto" or (isinstance(batch_size, int) and batch_size >= 1)
        require(ok, f"{section}.batch_size", batch_size, "must be auto or an integer >= 1")
        if weights is not None:  # eval.weights=~/... reaches us unexpanded (not a shell assignment)
            weights = str(Path(weights).expanduser())
        # Building the network draws random initial weights before loading the real ones; fork
        # the RNG so that turning FID on does not change the training run's random numbers.
        with torch.random.fork_rng(devices=[]):
            self.net = load_inception(weights, section).to(memory_format=torch.channels_last)
        self.identity = weights_identity(weights)
        self.batch_size = batch_size
        self.images_processed = 0

    def batch_size_on(self, device: torch.device) -> int:
        if isinstance(self.batch_size, int):
            return self.batch_size
        return 250 if device.type == "cuda" else 16

    @torch.inference_mode()
    @full_precision_convolutions()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
        device = next(self.net.parameters()).device
        feats = []
        for chunk in images.split(self.batch_size_on(device)):
            chunk = chunk.to(device)
            if chunk.shape[1] == 1:
                chunk = chunk.expand(-1, 3, -1, -1)  # grayscale -> RGB
            feats.append(self.net(chunk.contiguous()).float())
        self.images_processed += len(images)
        return torch.cat(feats)


class PassThrough(nn.Module):
    """The "feature extractor" given to torchmetrics: its input already is the features."""

    def __init__(self, num_features: int = FEATURE_DIM) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


# --------------------------------------------------------------------------------------------
# reference features, cached


@dataclass(frozen=True)
class ReferenceKey:
    """Everything that changes the reference features; the cache file is named by its hash."""

    dataset: str
    split: str
    image_size: int
    channels: int
    num_samples: int | None  # None: the whole split
    feature_network: str
    resize: str = "tf1-bilinear-299"
    source: str = ""  # for folders: a fingerprint of the files

    def filename(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        n = "all" if self.num_samples is None else str(self.num_samples)
        return f"{self.dataset}-{self.split}-{self.image_size}px-{self.channels}ch-n{n}-{digest}.pt"


def reference_key(dm: ImageDataModule, num_samples: int | None, feature_network: str) -> ReferenceKey:
    if num_samples is not None and num_samples >= dm.num_images():
        num_samples = None  # all of them (reference_indices): one cache file, whichever way it is asked for
    split, source = dm.reference_id()
    return ReferenceKey(dm.name, split, dm.image_size, dm.channels, num_samples, feature_network, source=source)


def reference_indices(total: int, num_samples: int | None) -> Tensor:
    """All images, or at most ``num_samples`` of them: a fixed random subset, the same in
    every run, spread over the whole split."""
    if num_samples is not None and num_samples < 2:
        raise UserInputError(f"reference_samples={num_samples} must be null (all images) or at least 2")
    if num_samples is None or num_samples >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:num_samples].sort().values


def compute_features(dm: ImageDataModule, indices: Tensor, extractor: InceptionFeatures) -> Tensor:
    """Features of the dataset images at ``indices`` (those that can be read), logging progress
    (slow on a CPU)."""
    feats, done, start, last_log = [], 0, time.perf_counter(), time.perf_counter()
    for batch in dm.uint8_batches(indices):
        feats.append(extractor(batch).cpu())
        done += len(batch)
        if time.perf_counter() - last_log > 30:
            rate = done / (time.perf_counter() - start)
            log.info("FID reference features: %d/%d images (%.1f images/s)", done, len(indices), rate)
            last_log = time.perf_counter()
    log.info("FID reference features: %d images in %.0f s", done, time.perf_counter() - start)
    return torch.cat(feats)


def reference_features(
    dm: ImageDataModule, num_samples: int | None, extractor: InceptionFeatures, cache_dir: str | Path
) -> tuple[Tensor, ReferenceKey, Path]:
    """Features (N, 2048) of the reference images, from the cache or computed once and cached."""
    key = reference_key(dm, num_samples, extractor.identity)
    path = Path(cache_dir).expanduser() / key.filename()
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("key") == asdict(key) and cached["features"].shape[1] == FEATURE_DIM:
                log.info("FID reference features from cache %s", path)
                return cached["features"], key, path
        except Exception as e:
            log.warning("ignoring unreadable FID cache file %s (%s); recomputing", path, e)
    dm.prepare_data()  # the reference split may be missing where training found its own
    dm.setup()
    indices = reference_indices(len(dm), num_samples)
    log.info("FID reference features: computing %s once (%d images) -> %s", dm.source, len(indices), path)
    features = compute_features(dm, indices, extractor)
    with atomic_path(path) as tmp:
        torch.save({"key": asdict(key), "features": features}, tmp)
    return features, key, path


# --------------------------------------------------------------------------------------------
# scoring


# Precision and recall's neighbours (k = 3, as the paper): each side needs more images than that.
PRC_NEIGHBOURS = 3


def min_samples(precision_recall: bool, section: str) -> tuple[int, str]:
    """The fewest images a FID evaluation may take (2 for FID's covariance, k + 1 with precision
    and recall), and why, in the settings of ``section`` (``eval``, ``fid``)."""
    if not precision_recall:
        return 2, ""
    why = f" (precision and recall take {PRC_NEIGHBOURS} neighbours; {section}.precision_recall=false allows 2)"
    return PRC_NEIGHBOURS + 1, why


def precision_recall(fake: Tensor, real: Tensor, k: int = PRC_NEIGHBOURS) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of generated features ``fake``
    against ``real``, with k-nearest-neighbour balls (k = 3, as the paper), by torch-fidelity:
    precision, the share of generated samples inside some real sample's ball (are they
    realistic?); recall, the share of real samples inside some generated sample's ball (is the
    data's variety drawn?)."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    # In blocks of 1,000 rows: N = 10,000 needs 40 MB per block, not 400 MB for all distances.
    out = prc_features_to_metric(
        fake.float(), real.float(), prc_neighborhood=k, prc_batch_size=1000, save_cpu_ram=True, verbose=False
    )
    return {"precision": float(out["precision"]), "recall": float(out["recall"])}


def _gather(features: Tensor) -> Tensor:
    """Every process's rows, in rank order (this process's alone outside DDP)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return features
    parts: list[Tensor | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, features.cpu())
    return torch.cat([p for p in parts if p is not None])


class FIDScorer:
    """FID (and optionally KID, precision and recall) of generated images against fixed
    reference features.

    The real side is fed once; ``score`` feeds the generated side and resets it. Under several
    processes, each passes its own share of the real features and of the latents; torchmetrics
    sums (FID) or concatenates (KID) the states across processes in ``compute()``, which every
    process must call. Precision and recall (``prc_real``: all real features, the same on every
    process) gather the generated features of all processes and compare them with as many real
    ones (the first of ``prc_real``): the k-NN balls of the method depend on the set sizes, so
    both sides have the same.
    """

    def __init__(
        self,
        extractor: InceptionFeatures,
        real_features: Tensor,
        total_real: int,
        total_fake: int,
        kid: bool = False,
        prc_real: Tensor | None = None,
    ) -> None:
        self.extractor = extractor
        self.prc_real = prc_real.cpu() if prc_real is not None else None
        device = next(extractor.parameters()).device
        self.fid = FrechetInceptionDistance(feature=PassThrough(), reset_real_features=False).to(device)
        self.kid: KernelInceptionDistance | None = None
        if kid:
            with warnings.catch_warnings():  # "KID keeps all features in memory": known, intended
                warnings.simplefilter("ignore", UserWarning)
                self.kid = KernelInceptionDistance(
                    feature=PassThrough(), subset_size=min(1000, total_real, total_fake), reset_real_features=False
                ).to(device)
        for chunk in real_features.split(2048):
            self._update(chunk.to(device), real=True)

    def _update(self, features: Tensor, real: bool) -> None:
        self.fid.update(features, real=real)
        if self.kid is not None:
            self.kid.update(features, real=real)

    def score(
        self,
        generate: Callable[..., Tensor],
        latents: Tensor,
        labels: Tensor | None = None,
        batch_size: int = 250,
    ) -> dict[str, float]:
        """FID of ``generate(latents)`` (images in [-1, 1]; ``generate(latents, labels)`` for a
        conditional generator), as {"fid": ..., "kid_mean", "kid_std"}. Leaves the global RNG
        as it found it (KID draws random subsets), so evaluating during training does not
        change the training run."""
        with torch.random.fork_rng(devices=self._rng_devices()):
            return self._score(generate, latents, labels, batch_size)

    def _rng_devices(self) -> list[int]:
        device = next(self.extractor.parameters()).device
        return [device.index or 0] if device.type == "cuda" else []

    def _score(
        self, generate: Callable[..., Tensor], latents: Tensor, labels: Tensor | None, batch_size: int
    ) -> dict[str, float]:
        device = next(self.extractor.parameters()).device
        kept: list[Tensor] = []
        for i, z in enumerate(latents.split(batch_size)):
            inputs = (z,) if labels is None else (z, labels[i * batch_size : (i + 1) * batch_size])
            images = to_uint8(generate(*inputs))  # rounded, not truncated
            features = self.extractor(images).to(device)
            self._update(features, real=False)
            if self.prc_real is not None:
                kept.append(features.cpu())
        result = {"fid": float(self.fid.compute())}
        if self.prc_real is not None:
            fake = _gather(torch.cat(kept))
            n = min(len(fake), len(self.prc_real))
            result |= precision_recall(fake[:n], self.prc_real[:n])
        self.fid.reset()  # the generated side only: reset_real_features=False
        if self.kid is not None:
            mean, std = self.kid.compute()
            result |= {"kid_mean": float(mean), "kid_std": float(std)}
            self.kid.reset()
        return result


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID between two sets of features (N, 2048), as ``FIDScorer`` computes it."""
    metric = FrechetInceptionDistance(feature=PassThrough(), reset_real_features=False)
    for chunk in real.split(2048):
        metric.update(chunk, real=True)
    for chunk in fake.split(2048):
        metric.update(chunk, real=False)
    return float(metric.compute())


def shard(tensor: Tensor, rank: int, world_size: int) -> Tensor:
    """Rows ``rank, rank + world_size, ...``: disjoint shares that together cover ``tensor``."""
    return tensor[rank::world_size]
