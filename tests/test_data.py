from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.types import _Stateful
from PIL import Image

from dcgan.datasets import FolderData, ImageDataModule, MNISTData
from dcgan.datasets.folder import ImageFolderDataset, find_images, load_image
from dcgan.datasets.mnist import load_mnist
from dcgan.datasets.module import TensorLoader
from dcgan.errors import UserInputError
from dcgan.images import resize_uint8, to_unit_range
from tests.helpers import datamodule


def folder_module(path: Path, **kwargs) -> ImageDataModule:  # type: ignore[no-untyped-def]
    settings = {"path": str(path), "image_size": 28, "channels": 3, "batch_size": 2, "num_workers": 0}
    return datamodule("folder", **(settings | kwargs))


def mnist_module(**kwargs) -> ImageDataModule:  # type: ignore[no-untyped-def]
    return datamodule("mnist", **({"image_size": 28, "batch_size": 8} | kwargs))


# -- folders ---------------------------------------------------------------------------------


def test_find_images_recursive_any_case_ignores_other_files(image_tree: tuple[Path, list[Path]]) -> None:
    root, files = image_tree
    found, skipped = find_images(root)
    assert found == files
    assert {p.suffix for p in found} == {".png", ".JPG", ".jpeg", ".bmp", ".webp"}
    assert skipped == {"not images": 2}  # notes.txt, data.csv (hidden files are not counted)


def test_a_linked_file_counts_once_and_the_dataset_line_says_what_was_skipped(
    image_tree: tuple[Path, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    """A collection where files are links to others (deduplicated datasets): each file once,
    the path that is not a link kept, dangling links skipped, and every skip counted."""
    root, files = image_tree
    (root / "links").mkdir()
    (root / "links" / "0.png").symlink_to(root / "rgb.png")  # absolute, listed before rgb.png
    (root / "links" / "1.png").symlink_to("../rgb.png")  # relative
    (root / "links" / "2.JPG").symlink_to(root / "gray.JPG")
    (root / "links" / "gone.png").symlink_to(root / "deleted.png")
    (root / "links" / "chain.png").symlink_to(root / "links" / "0.png")
    found, skipped = find_images(root)
    assert found == files  # the originals, not their links
    assert skipped == {"not images": 2, "dangling links": 1, "repeats": 4}
    # A file outside the folder, linked twice from inside: the first link stands for it.
    outside = root.parent / "outside.png"
    outside.write_bytes(files[0].read_bytes())
    (root / "links" / "x.png").symlink_to(outside)
    (root / "links" / "y.png").symlink_to(outside)
    found, skipped = find_images(root)
    assert found == sorted([*files, root / "links" / "x.png"]) and skipped["repeats"] == 5
    (root / "broken.png").write_bytes(b"not an image")
    dm = folder_module(root, in_memory=True)
    with caplog.at_level("INFO", logger="dcgan.datasets.module"), pytest.warns(UserWarning, match="skipped 1 of 10"):
        dm.setup()
    assert len(dm) == len(files) + 1
    assert caplog.messages[-1].endswith("; files skipped: 2 not images, 1 dangling links, 5 repeats, 1 unreadable"), (
        caplog.messages
    )


def test_fid_reference_of_a_folder_reuses_the_decoded_images(
    image_tree: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dcgan.datasets.folder as folder

    root, files = image_tree
    decoded: list[Path] = []
    original = folder.load_image

    def counting(path: Path, *args: int) -> torch.Tensor:
        decoded.append(path)
        return original(path, *args)

    monkeypatch.setattr(folder, "load_image", counting)
    dm = folder_module(root, in_memory=True)
    dm.setup()
    reference = dm.reference("train")
    reference.setup()
    images = torch.cat(list(reference.uint8_batches(torch.arange(len(reference)))))
    assert sorted(decoded) == files  # each file decoded once, for training; none for FID's reference
    assert torch.equal(images, dm.images) and reference.reference_id() == dm.reference_id()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 64])
def test_folder_in_memory_and_streaming_paths_agree(
    image_tree: tuple[Path, list[Path]], channels: int, size: int
) -> None:
    root, files = image_tree
    memory = folder_module(root, image_size=size, channels=channels, in_memory=True)
    memory.setup()
    assert memory.images is not None and memory.dataset is None
    assert memory.images.shape == (len(files), channels, size, size)
    assert memory.images.dtype == torch.uint8

    stream = folder_module(root, image_size=size, channels=channels, in_memory=False)
    stream.setup()
    assert stream.images is None and stream.dataset is not None
    assert len(stream) == len(files)
    for i in range(len(files)):
        image, label = stream.dataset[i]
        assert torch.equal(image, memory.images[i]) and label == -1  # files at the top level: no classes

    batches = list(stream.train_dataloader())
    assert len(batches) == len(files) // 2  # drop_last
    assert all(b.shape == (2, channels, size, size) and b.dtype == torch.uint8 for b, _ in batches)
    assert all(labels.tolist() == [-1, -1] for _, labels in batches)


@pytest.mark.parametrize("in_memory", [True, False])
def test_top_level_subfolders_are_classes(tmp_path: Path, in_memory: bool) -> None:
    """torchvision's ImageFolder convention: class i is the i-th subfolder by name."""
    for name, value in (("dog", 200), ("cat", 50)):
        (tmp_path / name / "more").mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), value).save(tmp_path / name / ("more" if i else ".") / f"{i}.png")
    dm = folder_module(tmp_path, channels=1, in_memory=in_memory, batch_size=6)
    dm.setup()
    assert dm.class_names == ["cat", "dog"]
    [(images, labels)] = list(dm.train_dataloader())
    # every image is labelled by its top-level folder: cats are dark, dogs are light
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert torch.equal(images.flatten(1).float().mean(1) > 128, labels == 1)
    (tmp_path / "stray.png").write_bytes((tmp_path / "cat" / "0.png").read_bytes())  # an image outside them
    flat = folder_module(tmp_path, channels=1, in_memory=in_memory, batch_size=7)
    flat.setup()
    assert flat.class_names is None
    assert next(iter(flat.train_dataloader()))[1].tolist() == [-1] * 7


def test_auto_in_memory_follows_the_memory_limit(image_tree: tuple[Path, list[Path]]) -> None:
    root, files = image_tree
    small = folder_module(root)
    small.setup()
    assert small.images is not None
    # the limit is on the decoded uint8 images: (files, 3, 28, 28) bytes fit exactly, a byte less does not
    size_mb = len(files) * 3 * 28 * 28 / 2**20
    exact = folder_module(root, memory_limit_mb=size_mb)
    exact.setup()
    assert exact.images is not None
    tight = folder_module(root, memory_limit_mb=size_mb - 1 / 2**20)
    tight.setup()
    assert tight.images is None and tight.dataset is not None


def test_images_are_resized_and_center_cropped(tmp_path: Path) -> None:
    # 90x30 image: left third black, middle white, right third black. After scaling the
    # shorter side to 28 and center-cropping, the crop is (almost) all white.
    array = np.zeros((30, 90), dtype=np.uint8)
    array[:, 30:60] = 255
    Image.fromarray(array).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 28, 1)
    assert out.shape == (1, 28, 28)
    assert out[:, :, 2:-2].float().mean() > 250


def test_mode_conversions(tmp_path: Path) -> None:
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")  # fully transparent red
    Image.new("L", (8, 8), 100).save(tmp_path / "gray.png")
    Image.fromarray(np.full((8, 8), 25700, dtype=np.uint16)).save(tmp_path / "gray16.png")
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    # transparent pixels land on white
    assert torch.all(load_image(tmp_path / "clear.png", 8, 3) == 255)
    # grayscale into an RGB run: three equal channels
    rgb = load_image(tmp_path / "gray.png", 8, 3)
    assert rgb.shape == (3, 8, 8) and torch.all(rgb == 100)
    # 16-bit gray is scaled to 8 bits (25700 / 65535 * 255 = 100), not clipped to white
    assert torch.all(load_image(tmp_path / "gray16.png", 8, 1) == 100)
    # CMYK with no ink is white
    assert load_image(tmp_path / "cmyk.jpg", 8, 3).float().mean() > 250
    # palette images take their palette's colours
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([10, 200, 30] + [0, 0, 0] * 255)
    palette.save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png", 8, 3)[:, 0, 0].tolist() == [10, 200, 30]
    # RGB into a grayscale run: luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    assert torch.all(load_image(tmp_path / "red.png", 8, 1) == 76)


def test_unreadable_images_are_skipped_with_one_warning(image_tree: tuple[Path, list[Path]]) -> None:
    root, files = image_tree
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "empty.jpg").write_bytes(b"")
    whole = (root / "rgb.png").read_bytes()
    (root / "truncated.png").write_bytes(whole[: len(whole) // 2])
    dm = folder_module(root, in_memory=True)
    with pytest.warns(UserWarning, match=r"skipped 3 of 11 files .*broken.png.*empty.jpg.*truncated.png"):
        dm.setup()
    assert len(dm) == len(files)
    # Streamed, a bad file is met while training: it is named, and the next readable image
    # stands in for it, so the epoch goes on with full batches.
    stream = folder_module(root, in_memory=False)
    stream.setup()
    with pytest.warns(UserWarning, match=r"skipped an unreadable image: cannot read image .*(broken|empty|truncated)"):
        batches = list(stream.train_dataloader())
    assert len(batches) == 11 // 2 and all(b.shape == (2, 3, 28, 28) for b, _ in batches)


def test_folder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=f"dataset.path={tmp_path / 'nope'} does not exist"):
        folder_module(tmp_path / "nope").setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=f"dataset.path={tmp_path / 'empty'} holds no images"):
        folder_module(tmp_path / "empty").setup()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(UserInputError, match="holds no images .*searched recursively for .bmp, .jpeg"):
        folder_module(tmp_path / "texts").setup()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="none of the 1 image files could be read"):
        folder_module(tmp_path / "bad", in_memory=True).setup()


def test_batch_larger_than_dataset_says_why(image_tree: tuple[Path, list[Path]]) -> None:
    root, files = image_tree
    with pytest.raises(UserInputError, match=f"batch_size=64 is larger than the {len(files)} images"):
        folder_module(root, batch_size=64).setup()


def test_streaming_dataset_names_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="cannot read image .*bad.png"):
        ImageFolderDataset([tmp_path / "bad.png"], [-1], 28, 1)[0]


# -- the in-memory loader ---------------------------------------------------------------------


def test_tensor_loader_shuffles_per_epoch_reproducibly() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    epoch = {"n": 0}
    loader = TensorLoader((images, -images.flatten().long()), batch_size=3, seed=7, epoch_fn=lambda: epoch["n"])
    assert len(loader) == 3  # 10 // 3, last partial batch dropped

    def order() -> list[int]:
        batches = list(loader)
        assert all(torch.equal(labels, -images.flatten().long()) for images, labels in batches)  # kept together
        return torch.cat([images for images, _ in batches]).flatten().tolist()

    first, again = order(), order()
    epoch["n"] = 1
    second = order()
    assert len(first) == 9 and len(set(first)) == 9  # no repeats within an epoch
    assert first == again  # same epoch, same order (what a resumed run sees)
    assert first != second  # a new order each epoch
    assert first != list(range(9))


def test_tensor_loader_shards_are_disjoint() -> None:
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1)
    shards = [
        torch.cat([b for (b,) in TensorLoader((images,), 5, seed=1, rank=r, world_size=2)]).flatten().tolist()
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 10
    assert set(shards[0]).isdisjoint(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(range(20))


def test_tensor_loader_resumes_at_its_saved_position() -> None:
    """Its state is the position ``position_fn`` gives; a new loader given that state yields the
    rest of that epoch in the same order, then whole epochs as an uninterrupted loader does."""
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1)
    epoch = {"n": 1}

    def batches() -> list[list[int]]:
        return [b.flatten().tolist() for (b,) in loader]

    loader = TensorLoader((images,), 4, seed=3, epoch_fn=lambda: epoch["n"], position_fn=lambda: (1, 3))
    assert isinstance(loader, _Stateful)  # what Lightning checks before saving and restoring it
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 3}
    whole = batches()
    epoch["n"] = 2
    next_epoch = batches()

    loader = TensorLoader((images,), 4, seed=3, epoch_fn=lambda: epoch["n"])
    loader.load_state_dict(state)
    epoch["n"] = 1
    assert batches() == whole[3:]
    epoch["n"] = 2
    assert batches() == next_epoch
    assert TensorLoader((images,), 4, seed=3).state_dict() == {}  # outside a Trainer: no position


def test_batches_are_scaled_to_unit_range() -> None:
    batch = torch.tensor([0, 255, 128], dtype=torch.uint8).view(3, 1, 1, 1)
    labels = torch.tensor([3, 1, 4])
    out, labels_out = mnist_module(root="x").on_after_batch_transfer((batch, labels), 0)
    assert labels_out is labels
    assert out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)
    assert to_unit_range(batch).min() == -1


# -- MNIST / Fashion-MNIST --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "split", "count"), [("mnist", "train", 60000), ("fashion_mnist", "test", 10000)])
def test_real_datasets_load_from_read_only_archives(data_dir: Path, name: str, split: str, count: int) -> None:
    images, labels = load_mnist(name, data_dir, split, download=False)  # type: ignore[arg-type]
    assert images.shape == (count, 1, 28, 28) and images.dtype == torch.uint8
    assert images.float().mean() > 20  # real digits/clothes, not zeros
    assert labels.shape == (count,) and labels.dtype == torch.long
    published = {  # images per class
        "mnist": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        "fashion_mnist": [1000] * 10,
    }
    assert torch.bincount(labels).tolist() == published[name]


def test_mnist_test_labels_match_the_published_order(data_dir: Path) -> None:
    _, labels = load_mnist("mnist", data_dir, "test", download=False)
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_mnist_module_resizes_and_expands_channels(data_dir: Path) -> None:
    dm = mnist_module(root=str(data_dir), split="test", image_size=64, channels=3, batch_size=50)
    dm.setup()
    assert dm.images is not None and dm.images.shape == (10000, 3, 64, 64)
    assert torch.equal(dm.images[:, 0], dm.images[:, 2])
    assert dm.class_names is not None and len(dm.class_names) == 10
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (50, 3, 64, 64) and labels.shape == (50,)
    # each label travels with its image: found among all images by pixel sum, then compared exactly
    assert dm.data is not None
    flat = dm.images.flatten(1)
    sums = flat.sum(1, dtype=torch.int64)
    found = []
    for image in images.flatten(1):
        [candidates] = (sums == image.sum(dtype=torch.int64)).nonzero(as_tuple=True)
        found.append(candidates[(flat[candidates] == image).all(1)][0])
    assert torch.equal(dm.data.labels[torch.stack(found)], labels)


def test_resize_uint8_keeps_range() -> None:
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    y = resize_uint8(x, 64)
    assert y.shape == (2, 1, 64, 64) and torch.all(y == 255)


def test_missing_dataset_offline_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("Network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    root = tmp_path / "data"
    dm = mnist_module(root=str(root))
    with pytest.raises(UserInputError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert f"expected {root}/MNIST/raw/train-images-idx3-ubyte.gz" in message
    assert not root.exists()  # torchvision's attempt left no empty <root>/MNIST/raw behind
    assert "the download failed" in message
    assert "DCGAN_DATA_DIR" in message and "dataset.root" in message


def test_a_data_root_under_home_is_found(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # dataset.root=~/data reaches the code unexpanded: the shell expands ~ in assignments only.
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for kind in ("images-idx3", "labels-idx1"):
        (raw / f"t10k-{kind}-ubyte.gz").symlink_to(data_dir / "MNIST" / "raw" / f"t10k-{kind}-ubyte.gz")
    monkeypatch.setenv("HOME", str(tmp_path))
    dm = mnist_module(root="~/data", split="test")
    dm.prepare_data()
    dm.setup()
    assert len(dm) == 10000


def test_missing_dataset_with_download_off(tmp_path: Path) -> None:
    dm = datamodule("fashion_mnist", root=str(tmp_path), split="test", batch_size=8, download=False)
    with pytest.raises(UserInputError, match=r"FashionMNIST/raw/t10k-images-idx3-ubyte.gz .*dataset.download=false"):
        dm.prepare_data()


def test_corrupt_archive_fails_its_checksum(data_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data = bytearray((data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").read_bytes())
    data[1000] ^= 0xFF
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(bytes(data))
    (raw / "t10k-labels-idx1-ubyte.gz").symlink_to(data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(UserInputError, match="t10k-images-idx3-ubyte.gz fails its checksum"):
        load_mnist("mnist", tmp_path, "test", download=False)


def test_unpacked_archives_are_read_too(data_dir: Path, tmp_path: Path) -> None:
    import gzip

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for kind in ("images-idx3", "labels-idx1"):
        (raw / f"t10k-{kind}-ubyte").write_bytes(
            gzip.decompress((data_dir / "MNIST" / "raw" / f"t10k-{kind}-ubyte.gz").read_bytes())
        )
    images, labels = load_mnist("mnist", tmp_path, "test", download=False)
    assert images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
    shutil.rmtree(raw)


def test_unknown_dataset_and_bad_settings_are_refused() -> None:
    with pytest.raises(UserInputError, match="dataset.name='cifar' is not known; choose one of mnist, fashion_mnist"):
        mnist_module(name="cifar", root="x")
    with pytest.raises(UserInputError, match="dataset.channels=2 must be 1"):
        mnist_module(root="x", channels=2)
    with pytest.raises(UserInputError, match="dataset.batch_size=0 must be an integer >= 1"):
        mnist_module(root="x", batch_size=0)
    with pytest.raises(UserInputError, match="dataset.split='val' is not known; choose one of train, test"):
        mnist_module(root="x", split="val")
    with pytest.raises(UserInputError, match="dataset=folder needs dataset.path"):
        datamodule("folder", path="")
    assert isinstance(mnist_module(root="x"), MNISTData) and isinstance(folder_module(Path("x")), FolderData)
