"""What a generator's images are: a small classifier of MNIST's digits or Fashion-MNIST's garments.

FID says how far generated images are from real ones, not why. A classifier trained on the
dataset's labels says which classes a generator draws (class coverage: mode collapse shows as
missing classes), whether a conditional generator draws the class it is asked for (conditional
accuracy), and its penultimate features give a Fréchet distance, ``fid_lenet``, that takes
seconds for 10,000 images on a CPU where Inception takes ten minutes. It is not FID (other
features, other scale): results are reported in Inception FID.

The classifier is trained once per dataset and image size on its training split (seeded,
deterministic for one machine and thread count; 4 to 5 min on a 2-core CPU), its accuracy
measured on the test split, and cached beside the FID reference features. It sees images as
the run does: at 64 or 128 px, the 28 px images resized to that size, then to its own 28 px.
A classifier trained at 28 px read those twice-resized images worse (Fashion-MNIST test
accuracy 86.7% against 91.2%, half the shirts called pullovers or T-shirts), and a real
image set would have looked like a generator that drops classes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance

from dcgan.datasets import ImageDataModule
from dcgan.datasets.mnist import NAMES as CLASSIFIED_DATASETS
from dcgan.datasets.mnist import load_mnist
from dcgan.files import atomic_path
from dcgan.images import resize_uint8, to_uint8, to_unit_range
from dcgan.metrics import PassThrough, reference_indices, shard

log = logging.getLogger(__name__)

# The classifier sees 28x28 grey images (the datasets' own); other sizes are resized to it.
SIZE = 28
FEATURES = 128
# A class counts as covered when the generated images hold at least this share of its share
# among the training images (e.g. 2.5% of them for a class of 10%).
COVERED_SHARE = 0.25


class LeNet(nn.Module):
    """uint8 images (N, C, S, S) -> (features (N, 128), logits (N, classes)): two 5x5 conv +
    max-pool stages and a 128-unit layer (LeCun et al. 1998, with ReLUs). Images of another
    size are resized to 28 px (bilinear, antialiased) and RGB is averaged to grey."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 5, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, num_classes)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = to_unit_range(images.to(self.head.weight.device)).mean(dim=1, keepdim=True)
        if x.shape[-1] != SIZE:
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        features = self.body(x)
        return features, self.head(features)


@dataclass(frozen=True)
class ClassifierKey:
    """Everything that changes the trained classifier; its cache file is named by the hash."""

    dataset: str
    # The run's image size: the training and test images are resized to it as the datasets
    # resize them (LeNet resizes them back to 28 px).
    image_size: int = SIZE
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    train_samples: int | None = None  # None: the whole training split (tests use fewer)
    version: int = 1  # of LeNet and train_classifier: raise it when either changes

    def filename(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        return f"classifier-{self.dataset}-{digest}.pt"


@dataclass
class Classifier:
    net: LeNet
    test_accuracy: float
    key: ClassifierKey

    @property
    def num_classes(self) -> int:
        return self.net.head.out_features


def train_classifier(images: Tensor, labels: Tensor, key: ClassifierKey, num_classes: int) -> LeNet:
    """A LeNet trained with Adam and cross-entropy on uint8 ``images`` (N, 1, S, S) and their
    ``labels``, seeded by ``key.seed``; the global RNG is left as it was (a training run that
    trains it on first use draws the same numbers as one that finds it cached)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(key.seed)
        net = LeNet(num_classes)
        order = torch.Generator().manual_seed(key.seed)
        if key.train_samples is not None:
            keep = torch.randperm(len(images), generator=order)[: key.train_samples]
            images, labels = images[keep], labels[keep]
        optimizer = torch.optim.Adam(net.parameters(), lr=key.lr)
        # The rate decays linearly to 0: ~0.5 points of test accuracy over a constant rate.
        steps = key.epochs * math.ceil(len(images) / key.batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
        net.train()
        for _ in range(key.epochs):
            for batch in torch.randperm(len(images), generator=order).split(key.batch_size):
                _, logits = net(images[batch])
                loss = F.cross_entropy(logits, labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(net: LeNet, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    correct = sum(
        int((net(x)[1].argmax(1).cpu() == y).sum())
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True)
    )
    return correct / len(labels)


def load_classifier(name: str, root: str | Path, cache_dir: str | Path, key: ClassifierKey | None = None) -> Classifier:
    """The classifier of MNIST or Fashion-MNIST (``name``) whose files are under ``root``: from
    the cache, or trained on the training split and tested on the test split, then cached."""
    key = key or ClassifierKey(name)
    path = Path(cache_dir).expanduser() / key.filename()
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == asdict(key):
                with torch.random.fork_rng(devices=[]):  # its random initialisation, overwritten
                    net = LeNet(saved["num_classes"])
                net.load_state_dict(saved["state_dict"])
                log.info("classifier from cache %s (test accuracy %.2f%%)", path, 100 * saved["test_accuracy"])
                return Classifier(net.eval().requires_grad_(False), saved["test_accuracy"], key)
        except Exception as e:  # a cache file is only ever a shortcut
            log.warning("ignoring unreadable classifier cache file %s (%s); training it again", path, e)
    start = time.perf_counter()
    images, labels = load_mnist(name, root, "train", download=False)
    num_classes = int(labels.max()) + 1
    net = train_classifier(resize_uint8(images, key.image_size), labels, key, num_classes)
    test_images, test_labels = load_mnist(name, root, "test", download=False)
    test_accuracy = accuracy(net, resize_uint8(test_images, key.image_size), test_labels)
    log.info(
        "classifier of %s at %d px trained once in %.0f s: test accuracy %.2f%% -> %s",
        name, key.image_size, time.perf_counter() - start, 100 * test_accuracy, path,
    )  # fmt: skip
    with atomic_path(path) as tmp:
        state = {
            "key": asdict(key),
            "num_classes": num_classes,
            "state_dict": net.state_dict(),
            "test_accuracy": test_accuracy,
        }
        torch.save(state, tmp)
    return Classifier(net, test_accuracy, key)


def classifies(dataset: str | None) -> bool:
    """Whether a classifier exists for this dataset (MNIST and Fashion-MNIST; not folders)."""
    return dataset in CLASSIFIED_DATASETS


# --------------------------------------------------------------------------------------------
# scores


class ClassCounts(Metric):
    """Predicted classes of generated images, and for a conditional generator, per requested
    class, how many were asked for and how many the classifier assigned to it. Sums over
    processes under DDP."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        for name in ("predicted", "asked", "correct"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: Tensor, asked: Tensor | None = None) -> None:
        k = len(self.predicted)
        self.predicted += torch.bincount(predicted, minlength=k)
        if asked is not None:
            self.asked += torch.bincount(asked, minlength=k)
            self.correct += torch.bincount(asked[predicted == asked], minlength=k)

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.predicted, self.asked, self.correct


def class_scores(predicted: Tensor, real_counts: Tensor) -> dict[str, object]:
    """From the generated images' predicted-class counts and the training images' class counts:
    ``class_histogram`` (counts), ``classes_covered`` (classes holding at least ``COVERED_SHARE``
    of their real share), ``class_kl`` (KL(generated || real) of the class shares, nats; 0 when
    the shares agree)."""
    generated = predicted.double() / max(int(predicted.sum()), 1)
    real = real_counts.double() / real_counts.sum()
    present = generated > 0
    kl = float((generated[present] * (generated[present] / real[present]).log()).sum())
    covered = int((generated >= COVERED_SHARE * real).sum())
    return {"class_histogram": predicted.tolist(), "classes_covered": covered, "class_kl": kl}


class ClassifierScorer:
    """``fid_lenet``, class coverage and (for a conditional generator) conditional accuracy of
    generated images, against fixed real images (``real_images`` uint8, this process's share)
    whose classes occur as ``real_counts``."""

    def __init__(self, classifier: Classifier, real_images: Tensor, real_counts: Tensor) -> None:
        self.net, self.test_accuracy = classifier.net, classifier.test_accuracy
        device = self.net.head.weight.device
        self.real_counts = real_counts.cpu()
        self.fid = FrechetInceptionDistance(feature=PassThrough(FEATURES), reset_real_features=False).to(device)
        self.counts = ClassCounts(classifier.num_classes).to(device)
        with torch.no_grad():
            for chunk in real_images.split(1000):
                self.fid.update(self.net(chunk)[0], real=True)

    @torch.no_grad()
    def score(
        self, generate: Callable[..., Tensor], latents: Tensor, labels: Tensor | None = None, batch_size: int = 500
    ) -> dict[str, object]:
        """Scores of ``generate(latents)`` (``generate(latents, labels)`` for a conditional
        generator; images in [-1, 1]): fid_lenet, class_histogram, classes_covered, class_kl,
        with labels cond_accuracy (overall) and cond_accuracy_per_class, and
        classifier_test_accuracy."""
        for i, z in enumerate(latents.split(batch_size)):
            asked = None if labels is None else labels[i * batch_size : (i + 1) * batch_size]
            images = to_uint8(generate(z) if asked is None else generate(z, asked))
            features, logits = self.net(images)
            self.fid.update(features, real=False)
            self.counts.update(logits.argmax(1), None if asked is None else asked.to(logits.device))
        result: dict[str, object] = {"fid_lenet": float(self.fid.compute())}
        predicted, asked_counts, correct = (t.cpu() for t in self.counts.compute())
        self.fid.reset()
        self.counts.reset()
        result |= class_scores(predicted, self.real_counts)
        if labels is not None:
            result["cond_accuracy"] = float(correct.sum() / asked_counts.sum())
            per_class = (correct.double() / asked_counts.clamp(min=1)).tolist()
            # None: the class was not asked for (JSON has no NaN)
            result["cond_accuracy_per_class"] = [
                v if n else None for v, n in zip(per_class, asked_counts.tolist(), strict=True)
            ]
        return result | {"classifier_test_accuracy": self.test_accuracy}


def reference_scorer(
    classifier: Classifier, reference: ImageDataModule, reference_samples: int | None, rank: int = 0, world: int = 1
) -> ClassifierScorer:
    """A scorer against the real images FID compares with (``reference_samples`` of the
    reference split, this process's share of them), whose class shares are the whole split's
    (a subset's differ by sampling)."""
    reference.prepare_data()
    reference.setup()
    assert reference.data is not None
    images = reference.data.images[reference_indices(len(reference), reference_samples)]
    counts = torch.bincount(reference.data.labels.cpu(), minlength=classifier.num_classes)
    return ClassifierScorer(classifier, shard(images, rank, world), counts)
