"""FID: the protocol, the cache of reference features, scoring under several processes, errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from dcgan.datasets import ImageDataModule, MNISTData
from dcgan.datasets.mnist import load_mnist
from dcgan.errors import UserInputError
from dcgan.images import to_uint8, to_unit_range
from dcgan.metrics import (
    FIDScorer,
    InceptionFeatures,
    precision_recall,
    reference_features,
    reference_indices,
    reference_key,
    shard,
    weights_identity,
)
from tests.helpers import REPO, datamodule, random_inception_weights, write_image_tree


def reference_datamodule(dataset: str, settings: dict[str, Any], split: str) -> ImageDataModule:
    """The FID reference of the training data module ``dataset`` with ``settings``."""
    return datamodule(dataset, **settings).reference(split)


@pytest.fixture(scope="module")
def extractor(fid_weights: Path) -> InceptionFeatures:
    return InceptionFeatures(str(fid_weights), batch_size=16)


@pytest.fixture(scope="module")
def mnist_test(data_dir: Path) -> torch.Tensor:
    return load_mnist("mnist", data_dir, "test", download=False)[0]


def scored_fid(extractor: InceptionFeatures, real_features: torch.Tensor, fake: torch.Tensor) -> float:
    """FID of uint8 images ``fake`` against ``real_features`` through the project's scorer (its
    "generator" returns the images themselves, which ``to_uint8`` turns back exactly)."""
    scorer = FIDScorer(extractor, real_features, len(real_features), len(fake))
    return scorer.score(lambda x: x, to_unit_range(fake))["fid"]


def test_real_halves_are_far_closer_than_noise(extractor: InceptionFeatures, mnist_test: torch.Tensor) -> None:
    real_a, real_b = mnist_test[:32], mnist_test[32:64]  # two disjoint sets of real digits
    noise = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fa = extractor(real_a)
    assert fa.shape == (32, 2048) and fa.dtype == torch.float32
    # FID, precision and recall from one pass of Inception over each set (FID 81.5 against 457;
    # precision and recall 0.91)
    scorer = FIDScorer(extractor, fa, 32, 32, prc_real=fa)
    real_scores, noise_scores = (scorer.score(lambda x: x, to_unit_range(x)) for x in (real_b, noise))
    assert 0 < real_scores["fid"] < noise_scores["fid"] / 4, (real_scores, noise_scores)
    # real digits are realistic and varied, noise is neither
    assert min(real_scores["precision"], real_scores["recall"]) > 0.5
    assert noise_scores["precision"] == 0.0 and noise_scores["recall"] == 0.0


# FID of the MNIST test images 0-49 against 50-99, by an implementation independent of the
# project's scoring path: torch-fidelity 0.4.0's own pipeline, on the same weights file,
#   torch_fidelity.calculate_metrics(input1=<images 0-49>, input2=<images 50-99>, fid=True,
#       cuda=False, feature_extractor_weights_path=<the FID weights>, cache=False)
# with the images as uint8 RGB tensors (gray repeated to 3 channels), computed once on a CPU.
# (0-99 against 100-199: 50.919463209557875, 0-199 against 200-399: 33.81429413253633, both
# also within 1e-3 of the project's.)
TORCH_FIDELITY_FID = 71.03461978019169


def test_fid_agrees_with_torch_fidelity_on_real_images(extractor: InceptionFeatures, mnist_test: torch.Tensor) -> None:
    fid = scored_fid(extractor, extractor(mnist_test[50:100]), mnist_test[:50])
    assert abs(fid - TORCH_FIDELITY_FID) < 1e-3, fid


def test_precision_and_recall_tell_realism_from_variety() -> None:
    g = torch.Generator().manual_seed(0)
    real, same = torch.randn(500, 64, generator=g), torch.randn(500, 64, generator=g)
    alike = precision_recall(same, real)
    assert alike["precision"] > 0.5 and alike["recall"] > 0.5  # 0.65, 0.64: k-NN balls in 64-d
    # a collapsed generator: one real sample 500 times is realistic, but draws none of the variety
    collapsed = precision_recall(real[:1].repeat(500, 1), real)
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.01
    assert precision_recall(same + 10, real) == {"precision": 0.0, "recall": 0.0}  # nowhere near


def test_pass_through_features_equal_torchmetrics_on_images(
    extractor: InceptionFeatures, mnist_test: torch.Tensor, fid_weights: Path
) -> None:
    """Our route (features once, fed to the metric) gives torchmetrics' own FID on the images,
    with the original FID code's resize (antialias=False)."""
    real, fake = mnist_test[:16], mnist_test[5000:5016]
    reference = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(fid_weights), antialias=False)
    reference.update(real.expand(-1, 3, -1, -1), real=True)
    reference.update(fake.expand(-1, 3, -1, -1), real=False)
    ours = scored_fid(extractor, extractor(real), fake)
    assert ours == pytest.approx(float(reference.compute()), rel=1e-3)


def test_features_are_computed_without_tf32_convolutions(extractor: InceptionFeatures) -> None:
    """torch runs cuDNN convolutions in TF32 by default; FID features must not depend on the GPU
    generation, so the network runs with full float32 convolutions, and the setting comes back."""
    conv = torch.backends.cudnn.conv

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))
            self.seen: list[str] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(conv.fp32_precision)
            return torch.zeros(len(x), 2048)

    # Set and restored by hand: pytest's monkeypatch cannot restore a submodule of an
    # nn.Module (it deletes it) nor this descriptor.
    recorder, net = Recorder(), extractor.net
    saved, conv.fp32_precision = conv.fp32_precision, "tf32"
    extractor.net = recorder
    try:
        extractor(torch.zeros(20, 1, 28, 28, dtype=torch.uint8))
        assert recorder.seen == ["ieee", "ieee"]  # batches of 16 and 4
        assert conv.fp32_precision == "tf32"
    finally:
        extractor.net = net
        conv.fp32_precision = saved


def test_generated_images_reach_the_metric_as_rounded_uint8() -> None:
    images = torch.tensor([-1.0, 1.0, -0.9165, 0.0]).view(4, 1, 1, 1)  # -0.9165 -> 10.64
    assert to_uint8(images).flatten().tolist() == [0, 255, 11, 128]  # rounded, not truncated


def test_reference_features_are_computed_once(extractor: InceptionFeatures, data_dir: Path, tmp_path: Path) -> None:
    hparams = {"root": str(data_dir), "image_size": 28, "channels": 1, "batch_size": 8}
    dm = reference_datamodule("mnist", hparams | {"split": "train"}, "test")
    assert isinstance(dm, MNISTData) and dm.split == "test" and dm.on_device is False
    before = extractor.images_processed
    first, key, path = reference_features(dm, 16, extractor, tmp_path)
    assert extractor.images_processed - before == 16
    assert path.parent == tmp_path and path.is_file()
    assert (key.dataset, key.split, key.image_size, key.num_samples) == ("mnist", "test", 28, 16)
    # same key: read from the cache, the feature network is not called again
    again, key_again, path_again = reference_features(
        reference_datamodule("mnist", hparams, "test"), 16, extractor, tmp_path
    )
    assert extractor.images_processed - before == 16
    assert torch.equal(first, again) and key_again == key and path_again == path
    # anything that changes the features changes the key: here the image size and the count
    other_size = reference_datamodule("mnist", hparams | {"image_size": 64}, "test")
    _, key64, path64 = reference_features(other_size, 16, extractor, tmp_path)
    _, _, path8 = reference_features(reference_datamodule("mnist", hparams, "test"), 8, extractor, tmp_path)
    assert extractor.images_processed - before == 16 + 16 + 8
    assert len({path, path64, path8}) == 3 and key64.image_size == 64
    # as many as the split holds (train.py's eval.reference_samples=10000 of the 10,000 test
    # images) is all of them (generate.py's fid.reference_samples=null): one cache file
    test_split = reference_datamodule("mnist", hparams, "test")
    assert reference_key(test_split, 10_000, "net") == reference_key(test_split, None, "net")
    assert reference_key(test_split, 9_999, "net").num_samples == 9_999
    train_split = reference_datamodule("mnist", hparams, "train")
    assert reference_key(train_split, 10_000, "net").num_samples == 10_000


def test_folder_reference_follows_its_files(extractor: InceptionFeatures, tmp_path: Path) -> None:
    from tests.helpers import write_image_tree

    files = write_image_tree(tmp_path / "imgs")
    hparams = {"path": str(tmp_path / "imgs"), "image_size": 28, "channels": 3, "batch_size": 2}
    feats, key, path = reference_features(
        reference_datamodule("folder", hparams, "test"), None, extractor, tmp_path / "c"
    )
    assert feats.shape == (len(files), 2048) and key.split == "all" and key.source
    # reference_samples is an upper bound: a folder of 8 images gives 8, the same cache file
    before = extractor.images_processed
    at_most, key_100, path_100 = reference_features(
        reference_datamodule("folder", hparams, "test"), 100, extractor, tmp_path / "c"
    )
    assert torch.equal(at_most, feats) and (key_100, path_100) == (key, path)
    assert extractor.images_processed == before  # read from the cache, not computed again
    with pytest.raises(UserInputError, match=r"reference_samples=1 must be null \(all images\) or at least 2"):
        reference_features(reference_datamodule("folder", hparams, "test"), 1, extractor, tmp_path / "c")
    files[0].write_bytes(files[1].read_bytes())  # a file changes: a new key, computed again
    _, key2, path2 = reference_features(
        reference_datamodule("folder", hparams, "test"), None, extractor, tmp_path / "c"
    )
    assert key2.source != key.source and path2 != path
    # A streamed folder leaves out an unreadable file, as an in-memory one does.
    files[2].write_bytes(b"not an image")
    for in_memory in (True, False):
        dm = reference_datamodule("folder", hparams | {"in_memory": in_memory, "num_workers": 0}, "test")
        with pytest.warns(UserWarning, match=f"skipped 1 of {len(files)} files .*{files[2].name}"):
            features, _, _ = reference_features(dm, None, extractor, tmp_path / f"c{in_memory}")
        assert features.shape == (len(files) - 1, 2048)


# -- errors ------------------------------------------------------------------------------------


def test_weights_under_home_are_found(fid_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w.pth").symlink_to(fid_weights)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert InceptionFeatures("~/w.pth", "auto").identity == weights_identity(str(fid_weights))


def test_a_missing_reference_split_is_downloaded_or_the_error_says_why(
    extractor: InceptionFeatures, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "MNIST" / "raw"  # the training split only
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").symlink_to(data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("Network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    hparams = {"root": str(tmp_path), "image_size": 28, "channels": 1, "batch_size": 8}
    with pytest.raises(UserInputError, match=r"mnist test images not found: .* and the download failed"):
        reference_features(reference_datamodule("mnist", hparams, "test"), None, extractor, tmp_path / "cache")


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"FID weights file .*nope.pth does not exist; set eval.weights") as info:
        InceptionFeatures(str(tmp_path / "nope.pth"), "auto")
    assert str(info.value).endswith("; or train without FID: eval.fid=false")
    # generate.py's settings are fid.*, and it has no FID to turn off
    with pytest.raises(UserInputError, match=r"does not exist; set fid.weights=<file>, or the DCGAN_FID") as info:
        InceptionFeatures(str(tmp_path / "nope.pth"), "auto", section="fid")
    assert "eval." not in str(info.value)


def test_weights_other_than_the_fid_networks_are_refused(tmp_path: Path, fid_weights: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 1000)
    expected = (
        r"\(sha256 [0-9a-f]{8}\.\.\.\) is not the FID Inception weights: a different, truncated or corrupt "
        r"file. Expected weights-inception-2015-12-05-6726825d.pth \(sha256 6726825d\.\.\.\) or "
        r"inception-2015-12-05-fid-features-only.pth \(sha256 0a714eca\.\.\.\); set eval.weights"
    )
    with pytest.raises(UserInputError, match=f"junk.pth {expected}") as info:
        InceptionFeatures(str(tmp_path / "junk.pth"), "auto")
    assert "weights_only" not in str(info.value) and info.value.__cause__ is None  # no torch text
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(fid_weights.read_bytes()[:10_000_000])
    with pytest.raises(UserInputError, match=f"truncated.pth {expected}"):
        InceptionFeatures(str(truncated), "auto")
    # The network's own architecture with other weights: a valid file, not the FID network.
    other = random_inception_weights(tmp_path / "other.pth")
    with pytest.raises(UserInputError, match=f"other.pth {expected}"):
        InceptionFeatures(str(other), "auto")


def test_no_weights_offline_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("Network is unreachable (test)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download either
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(UserInputError) as info:
        InceptionFeatures(None, "auto")
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "DCGAN_FID_WEIGHTS" in message and "eval.weights" in message and "eval.fid=false" in message


# -- several processes ----------------------------------------------------------------------------


class _ToyFeatures(nn.Module):
    """A stand-in for Inception (same interface, cheap): uint8 images -> 2048-d features."""

    def __init__(self) -> None:
        super().__init__()
        # No bias: nn.Linear would draw it from the global RNG, which differs between this
        # process and the spawned ranks, so their FIDs would not be comparable.
        self.proj = nn.Linear(28 * 28, 2048, bias=False)
        nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images.float().flatten(1) / 255)


def _toy_generate(z: torch.Tensor) -> torch.Tensor:
    return torch.tanh(z[:, :1, None].expand(-1, 28, 28)[:, None] + torch.linspace(-1, 1, 28))


def _toy_real() -> torch.Tensor:
    """40 real features for precision and recall: the toy features of toy images from other
    latents than the generated ones, so that precision is neither 0 nor 1."""
    z = torch.randn(40, 8, generator=torch.Generator().manual_seed(1)) + 2.5
    return _ToyFeatures()(to_uint8(_toy_generate(z)))


def _score_on_rank(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    real = torch.randn(40, 2048, generator=torch.Generator().manual_seed(1))
    z = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    scorer = FIDScorer(_ToyFeatures(), shard(real, rank, world), 40, 30, kid=True, prc_real=_toy_real())  # type: ignore[arg-type]
    result = scorer.score(_toy_generate, shard(z, rank, world), batch_size=4)
    torch.save(result, f"{out}.{rank}")
    dist.destroy_process_group()


def test_scores_under_two_processes_match_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank scores its share; compute() syncs the states: every rank gets the FID (and KID
    mean) of all samples, as one process does."""
    single_real = torch.randn(40, 2048, generator=torch.Generator().manual_seed(1))
    z = torch.randn(30, 8, generator=torch.Generator().manual_seed(2))
    scorer = FIDScorer(_ToyFeatures(), single_real, 40, 30, kid=True, prc_real=_toy_real())  # type: ignore[arg-type]
    single = scorer.score(_toy_generate, z)
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME", "lo"))  # undone after the test
    mp.spawn(_score_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "result")), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"result.{r}", weights_only=True) for r in (0, 1)]
    assert per_rank[0]["fid"] == per_rank[1]["fid"]
    assert per_rank[0]["fid"] == pytest.approx(single["fid"], rel=1e-6)
    # precision and recall see every rank's generated features
    for key in ("precision", "recall"):
        assert per_rank[0][key] == per_rank[1][key] == single[key]
    assert 0 < single["precision"] < 1  # 0.43: a score that depends on which images are compared
    # KID averages random subsets: equal up to float rounding of the summation order
    assert per_rank[0]["kid_mean"] == pytest.approx(per_rank[1]["kid_mean"], rel=1e-5)


def test_the_real_data_floor_command(extractor: InceptionFeatures, mnist_test: torch.Tensor, data_dir: Path) -> None:
    """tools/fid_floor.py: N training images (the references' fixed subset) against test images,
    checked against features computed here and the Fréchet distance in closed form (scipy)."""
    import sys

    import numpy as np
    from scipy import linalg

    sys.path.insert(0, str(REPO / "tools"))
    from fid_floor import floor

    record = floor(["num_samples=32", "reference_samples=64", f"paths.data_dir={data_dir}"])
    assert {k: record[k] for k in ("dataset", "num_samples", "num_reference", "reference_split")} == {
        "dataset": "mnist", "num_samples": 32, "num_reference": 64, "reference_split": "test"
    }  # fmt: skip
    train = load_mnist("mnist", data_dir, "train", download=False)[0]
    a = extractor(train[reference_indices(len(train), 32)]).double().numpy()
    b = extractor(mnist_test[reference_indices(len(mnist_test), 64)]).double().numpy()
    covmean = linalg.sqrtm(np.cov(a, rowvar=False) @ np.cov(b, rowvar=False)).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(
        np.cov(a, rowvar=False) + np.cov(b, rowvar=False) - 2 * covmean
    )
    assert record["fid"] == pytest.approx(expected, rel=1e-3)
    # the training images as the "generated" side, as in a model's score; real vs real: near 1
    pr = precision_recall(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert record["precision"] == pytest.approx(pr["precision"]) and record["recall"] == pytest.approx(pr["recall"])
    assert min(pr.values()) > 0.7, pr


def test_a_folders_floor_is_one_half_against_the_other(extractor: InceptionFeatures, tmp_path: Path) -> None:
    """A folder is its own reference: its floor compares two fixed random halves of its images."""
    from dcgan.datasets.folder import load_image
    from dcgan.metrics import frechet_distance
    from tools.fid_floor import floor

    root = tmp_path / "images"
    files = write_image_tree(root)
    settings = ["dataset=folder", f"dataset.path={root}", "dataset.image_size=64", "dataset.batch_size=4"]
    settings.append(f"eval.cache_dir={tmp_path / 'c'}")
    record = floor(settings)
    assert {k: record[k] for k in ("dataset", "num_samples", "num_reference", "reference_split")} == {
        "dataset": "folder", "num_samples": 4, "num_reference": 4, "reference_split": "other half"
    }  # fmt: skip
    features = extractor(torch.stack([load_image(f, 64, 3) for f in files]))
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert record["fid"] == pytest.approx(frechet_distance(features[order[:4]], features[order[4:]]), rel=1e-3)
    assert record["fid"] > 0  # not the folder against itself
    with pytest.raises(UserInputError, match="num_samples do not apply to a folder"):
        floor([*settings, "num_samples=4"])


def test_the_floor_command_answers_help_and_bad_overrides_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools.fid_floor import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("``python tools/fid_floor.py [dataset=mnist] [num_samples=10000]")
    with pytest.raises(SystemExit) as info:
        main(["dataset=["])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: cannot read 'dataset=[': no viable alternative at input '['; settings are key=value, e.g. "
        "trainer.max_epochs=40 (https://hydra.cc/docs/1.2/advanced/override_grammar/basic)\n"
    )
