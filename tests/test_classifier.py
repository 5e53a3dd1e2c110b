"""The classifier behind class coverage, conditional accuracy and fid_lenet (dcgan/classifier.py):
real images score as real, a collapsed generator as collapsed, and training is seeded and cached."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dcgan import classifier as clf
from dcgan.classifier import ClassifierKey, ClassifierScorer, class_scores, load_classifier
from dcgan.datasets.mnist import load_mnist
from dcgan.images import to_unit_range

# Tiny settings: 3,000 training images, 1 epoch (a few seconds on a CPU), ~93% test accuracy.
TINY = ClassifierKey("mnist", epochs=1, train_samples=3000)


@pytest.fixture(scope="module")
def tiny(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> clf.Classifier:
    return load_classifier("mnist", data_dir, tmp_path_factory.mktemp("classifier"), TINY)


@pytest.fixture(scope="module")
def mnist_test(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return load_mnist("mnist", data_dir, "test", download=False)


@pytest.fixture(scope="module")
def scorer(tiny: clf.Classifier, data_dir: Path) -> ClassifierScorer:
    images, labels = load_mnist("mnist", data_dir, "train", download=False)
    return ClassifierScorer(tiny, images[:5000], torch.bincount(labels, minlength=10))


def real_images_generator(images: torch.Tensor):  # type: ignore[no-untyped-def]
    """A "generator" that returns real images, the i-th latent's being image i (in [-1, 1])."""

    def generate(z: torch.Tensor) -> torch.Tensor:
        return to_unit_range(images[z[:, 0].long()])

    return generate


def indices(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)[:, None]


def test_the_tiny_classifier_is_accurate_enough(tiny: clf.Classifier) -> None:
    assert 0.9 < tiny.test_accuracy < 1.0


def test_real_images_cover_every_class(scorer: ClassifierScorer, mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = mnist_test
    result = scorer.score(real_images_generator(images), indices(5000))
    assert result["classes_covered"] == 10 and sum(result["class_histogram"]) == 5000  # type: ignore[arg-type]
    assert result["class_kl"] < 0.01  # type: ignore[operator]
    # real test images against real training images: a small distance, far below a collapsed G's
    assert result["fid_lenet"] < 2.0  # type: ignore[operator]
    assert "cond_accuracy" not in result


def test_a_generator_of_ones_covers_one_class(
    scorer: ClassifierScorer, mnist_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, labels = mnist_test
    ones = images[labels == 1]
    result = scorer.score(real_images_generator(ones), indices(1000))
    assert result["classes_covered"] == 1 and result["class_histogram"][1] > 950  # type: ignore[index]
    assert result["class_kl"] > 2.0  # ~ln(1 / 0.112), the share of ones in MNIST's training split
    assert result["fid_lenet"] > 50  # type: ignore[operator]


def test_class_scores_by_hand() -> None:
    real = torch.tensor([30.0, 10.0])
    assert class_scores(torch.tensor([3, 1]), real) == {
        "class_histogram": [3, 1],
        "classes_covered": 2,
        "class_kl": 0.0,
    }
    # a class with under a quarter of its real share is not covered; KL(generated || real)
    scores = class_scores(torch.tensor([39, 1]), real)
    kl = 39 / 40 * math.log(39 / 40 / 0.75) + 1 / 40 * math.log(1 / 40 / 0.25)
    assert scores["classes_covered"] == 1 and scores["class_kl"] == pytest.approx(kl)


def test_conditional_accuracy_of_real_images_is_the_classifiers_accuracy(
    scorer: ClassifierScorer, tiny: clf.Classifier, mnist_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """A "generator" that returns a real test image of the requested class scores what the
    classifier gets right on those images, per class and overall."""
    images, labels = mnist_test
    by_class = [images[labels == k][:100] for k in range(10)]
    asked = torch.arange(10).repeat(100)  # class k's j-th request is its j-th test image
    position = torch.arange(1000) // 10

    def generate(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return to_unit_range(torch.stack([by_class[int(k)][int(j)] for k, j in zip(y, z[:, 0], strict=True)]))

    result = scorer.score(generate, position.float()[:, None], asked, batch_size=64)
    with torch.no_grad():
        right = [float((tiny.net(x)[1].argmax(1) == k).float().mean()) for k, x in enumerate(by_class)]
    assert result["cond_accuracy_per_class"] == pytest.approx(right)
    assert result["cond_accuracy"] == pytest.approx(sum(right) / 10)
    assert 0.85 < result["cond_accuracy"] < 1.0  # type: ignore[operator]


def test_training_is_seeded_cached_and_leaves_the_rng_alone(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ClassifierKey("mnist", epochs=1, train_samples=500)
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    first = load_classifier("mnist", data_dir, tmp_path / "a", key)
    assert torch.equal(torch.rand(3), expected_next)  # training drew from its own generators
    second = load_classifier("mnist", data_dir, tmp_path / "b", key)
    for a, b in zip(first.net.state_dict().values(), second.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert first.test_accuracy == second.test_accuracy
    # cached: a second load trains nothing and draws no random numbers either; other
    # settings are another file
    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: pytest.fail("trained again"))
    torch.manual_seed(7)
    cached = load_classifier("mnist", data_dir, tmp_path / "a", key)
    assert torch.equal(torch.rand(3), expected_next)
    assert cached.test_accuracy == first.test_accuracy
    assert [p.name for p in (tmp_path / "a").iterdir()] == [key.filename()]
    assert ClassifierKey("mnist", epochs=2, train_samples=500).filename() != key.filename()


@pytest.mark.slow
def test_a_run_logs_class_coverage(smoke_run: Path) -> None:
    records = [json.loads(line) for line in (smoke_run / "classes.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(sum(r["class_histogram"]) == 256 and 1 <= r["classes_covered"] <= 10 for r in records)
    [events] = (smoke_run / "tensorboard").rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"histograms": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"val/classes_covered", "val/class_kl", "val/fid_lenet"} <= set(tags["scalars"])
    [first, _] = accumulator.Histograms("val/classes")
    assert first.histogram_value.bucket == [float(c) for c in records[0]["class_histogram"]]


def test_the_classifier_of_a_size_learns_the_images_at_that_size(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 64 px a run's images are the 28 px ones resized; the classifier learns and is tested
    on them so (trained at 28 px it called half of Fashion-MNIST's real shirts something else)."""
    from dcgan.images import resize_uint8

    seen: list[torch.Tensor] = []
    train = clf.train_classifier

    def recording(images: torch.Tensor, *args: object) -> clf.LeNet:
        seen.append(images)
        return train(images, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(clf, "train_classifier", recording)
    tested: list[torch.Tensor] = []
    measure = clf.accuracy
    monkeypatch.setattr(
        clf, "accuracy", lambda net, images, labels: tested.append(images) or measure(net, images, labels)
    )
    key = ClassifierKey("mnist", 64, epochs=1, train_samples=500)
    classifier = load_classifier("mnist", data_dir, tmp_path, key)
    train_images, _ = load_mnist("mnist", data_dir, "train", download=False)
    test_images, _ = load_mnist("mnist", data_dir, "test", download=False)
    assert torch.equal(seen[0], resize_uint8(train_images, 64))
    assert torch.equal(tested[0], resize_uint8(test_images, 64))
    assert classifier.test_accuracy > 0.5  # it reads 64 px images (through its 28 px input)
    assert key.filename() != ClassifierKey("mnist", epochs=1, train_samples=500).filename()
