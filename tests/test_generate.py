"""generate.py's modes on the checkpoint of a real (tiny) training run: files written, image
sizes, frame counts, determinism, and refusals of bad input."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from dcgan.errors import OutputError, UserInputError
from dcgan.files import NpzWriter, atomic_dir
from dcgan.generate import generate
from dcgan.report import D_TAGS, LOSS_TAGS, read_scalars, write_report
from dcgan.sampling import interpolation_path, latents, lerp, slerp, vary_dimensions
from tests.helpers import CONF

S = 28  # the smoke run's image size
PAD = 2


@pytest.fixture
def gen(smoke_run: Path, tmp_path: Path) -> Callable[..., list[Path]]:
    """generate(cfg) on the smoke run, as `python generate.py checkpoint=<run> out_dir=<tmp> ...`."""

    def _generate(*overrides: str, out: str = "out") -> list[Path]:
        return generate(compose_generate(f"checkpoint={smoke_run}", f"out_dir={tmp_path / out}", *overrides))

    return _generate


def compose_generate(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def cells(path: Path, nrow: int) -> np.ndarray:
    """A grid PNG of S-pixel images with 2 px padding -> its images (N, S, S), row by row."""
    grid = read(path)
    grid = grid[..., 0] if grid.ndim == 3 else grid
    if grid.shape == (S, S):
        return grid[None]  # one image: torchvision's make_grid adds no padding
    rows = (grid.shape[0] - PAD) // (S + PAD)
    return np.stack(
        [
            grid[PAD + r * (S + PAD) : PAD + r * (S + PAD) + S, PAD + c * (S + PAD) : PAD + c * (S + PAD) + S]
            for r in range(rows)
            for c in range(nrow)
        ]
    )


def gif_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as gif:
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("L")))
        return frames


def grid_images(gen: Callable[..., list[Path]], seed: int, n: int) -> np.ndarray:
    [path] = gen(f"seed={seed}", f"grid.num_images={n}", f"grid.nrow={n}", out=f"grid{seed}-{n}")
    return cells(path, n)


# -- latents ------------------------------------------------------------------------------------


def test_latent_i_of_a_seed_does_not_depend_on_how_many_are_drawn() -> None:
    many = latents(50, 100, seed=3)
    assert torch.equal(latents(4, 100, seed=3, start=10), many[10:14])
    assert torch.equal(latents(1, 100, seed=3), many[:1])
    assert not torch.equal(latents(1, 100, seed=4), many[:1])
    assert abs(many.mean()) < 0.05 and abs(many.std() - 1) < 0.05  # N(0, I)


def test_interpolation_paths() -> None:
    z0, z1 = torch.randn(100), torch.randn(100)
    t = torch.linspace(0, 1, 9)
    for fn in (lerp, slerp):
        path = fn(z0, z1, t)
        assert path.shape == (9, 100)
        assert torch.allclose(path[0], z0, atol=1e-5) and torch.allclose(path[-1], z1, atol=1e-5)
    # slerp keeps the norm of (equal-norm) endpoints; the straight line dips through the middle.
    z1 = z1 * (z0.norm() / z1.norm())
    assert slerp(z0, z1, t).norm(dim=1) == pytest.approx(float(z0.norm()), rel=1e-4)
    assert lerp(z0, z1, t)[4].norm() < 0.9 * z0.norm()
    points = torch.randn(3, 100)
    closed = interpolation_path(points, 5, "slerp", closed=True)
    assert closed.shape == (3, 5, 100)
    assert torch.equal(closed[2, -1], points[0]) and torch.equal(closed[1, 0], points[1])
    with pytest.raises(UserInputError, match="interpolate.steps=1 must be >= 2"):
        interpolation_path(points, 1, "slerp")


def test_vary_dimensions_changes_one_dimension_per_row() -> None:
    z = torch.randn(100)
    varied = vary_dimensions(z, [3, 50], 2.0, 5)
    assert varied.shape == (2, 5, 100)
    assert varied[0, :, 3].tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    changed = (varied != z).any(dim=1)  # (rows, D): which dimensions differ from z
    assert changed[0].nonzero().flatten().tolist() == [3] and changed[1].nonzero().flatten().tolist() == [50]


# -- modes ----------------------------------------------------------------------------------------


def test_grid(gen: Callable[..., list[Path]], tmp_path: Path) -> None:
    [path] = gen("grid.num_images=10", "grid.nrow=5")
    assert path == tmp_path / "out" / "grid-best-seed0.png"
    with Image.open(path) as img:
        assert img.mode == "L" and img.size == (5 * S + 6 * PAD, 2 * S + 3 * PAD)
    # Same seed: the same bytes; another seed: other images.
    [again] = gen("grid.num_images=10", "grid.nrow=5", out="again")
    assert again.read_bytes() == path.read_bytes()
    [other] = gen("grid.num_images=10", "grid.nrow=5", "seed=1", out="other")
    assert not np.array_equal(read(other), read(path))


def test_ema_picks_the_average_or_the_trained_generator(tmp_path: Path) -> None:
    from tests.test_module import fit, tiny_model

    torch.manual_seed(0)
    model = tiny_model(ema_decay=0.5, num_fixed_samples=4)
    trainer = fit(model, batches=3)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    grids, paths = {}, {}
    for ema in (True, False):  # into one folder: the raw G's files are named apart
        cfg = compose_generate(f"checkpoint={ckpt}", f"out_dir={tmp_path / 'out'}", f"ema={ema}", "grid.num_images=4")
        [paths[ema]] = generate(cfg)
        grids[ema] = cells(paths[ema], 2)
    assert (paths[True].name, paths[False].name) == ("grid-last-seed0.png", "grid-last-raw-seed0.png")
    z = latents(4, model.hparams.latent_dim, 0)
    for ema, images in grids.items():
        expected = (model.generate(z, ema=ema) + 1).mul(127.5).round().clamp(0, 255).to(torch.uint8)[:, 0]
        assert np.array_equal(images, expected.numpy())
    assert not np.array_equal(grids[True], grids[False])


@pytest.mark.parametrize("mode", ["grid", "samples", "fid"])
def test_a_checkpoint_file_is_read_once_per_call(
    gen: Callable[..., list[Path]], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    real_load, checkpoints_read = torch.load, []

    def load(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(f).endswith(".ckpt"):
            checkpoints_read.append(Path(f).name)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    gen(f"mode={mode}", "samples.num_images=4", "fid.num_samples=16", "fid.reference_samples=64")
    assert checkpoints_read == ["best.ckpt"]


@pytest.mark.slow
def test_default_output_folder_is_in_the_run(smoke_run: Path) -> None:
    written = generate(compose_generate(f"checkpoint={smoke_run / 'checkpoints' / 'last.ckpt'}", "grid.num_images=4"))
    assert written == [smoke_run / "generated" / "grid-last-seed0.png"]
    assert written[0].is_file()


def test_samples_as_png_files_and_npz(gen: Callable[..., list[Path]], tmp_path: Path) -> None:
    folder, npz = gen("mode=samples", "samples.num_images=10", "samples.npz=true", "batch_size=4")
    assert folder == tmp_path / "out" / "samples-best-seed0" and npz == folder.with_suffix(".npz")
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(10)]
    pngs = np.stack([read(f) for f in files])
    assert pngs.shape == (10, S, S) and pngs.dtype == np.uint8
    with np.load(npz) as data:
        assert list(data) == ["arr_0"]
        array = data["arr_0"]
    assert array.shape == (10, S, S, 1) and array.dtype == np.uint8
    assert np.array_equal(array[..., 0], pngs)
    # Sample i is the grid's image i, whatever the batch size; a shorter run gives the first ones.
    assert np.array_equal(pngs, grid_images(gen, 0, 10))
    gen("mode=samples", "samples.num_images=4", "samples.npz=true", "batch_size=3", out="fewer")
    with np.load(tmp_path / "fewer" / "samples-best-seed0.npz") as data:
        assert np.array_equal(data["arr_0"], array[:4])
    # Writing again replaces the folder as a whole: no files left over from the longer run.
    gen("mode=samples", "samples.num_images=3")
    assert sorted(f.name for f in folder.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files


def test_samples_need_an_output_format(gen: Callable[..., list[Path]]) -> None:
    with pytest.raises(UserInputError, match="nothing to write"):
        gen("mode=samples", "samples.png=false")


def test_interpolate_between_seeds(gen: Callable[..., list[Path]], tmp_path: Path) -> None:
    written = gen("mode=interpolate", "interpolate.seeds=[3,7]", "interpolate.steps=5")
    names = [p.name for p in written]
    assert names == [f"interpolate-best-seeds3-7-{m}.{ext}" for m in ("linear", "slerp") for ext in ("png", "gif")]
    for png, gif in (written[:2], written[2:]):
        images = cells(png, 5)
        assert images.shape == (5, S, S)
        frames = gif_frames(gif)
        assert len(frames) == 5
        scale = frames[0].shape[0] // S
        assert scale == 5  # 28 px frames scaled up to about 128 px
        assert np.array_equal(np.stack([f[::scale, ::scale] for f in frames]), images)
        # The ends are the seeds' own images: the first image of `grid seed=3` and of `seed=7`.
        assert np.array_equal(images[0], grid_images(gen, 3, 1)[0])
        assert np.array_equal(images[-1], grid_images(gen, 7, 1)[0])
    assert not np.array_equal(cells(written[0], 5)[2], cells(written[2], 5)[2])  # linear != slerp midway


def test_interpolate_random_points_closed(gen: Callable[..., list[Path]]) -> None:
    png, gif = gen(
        "mode=interpolate",
        "interpolate.points=3",
        "interpolate.steps=4",
        "interpolate.closed=true",
        "interpolate.method=slerp",
    )
    images = cells(png, 4)  # one row per pair: 0->1, 1->2, 2->0
    assert images.shape == (12, S, S)
    firsts = grid_images(gen, 0, 3)
    assert np.array_equal(images[[0, 4, 8]], firsts) and np.array_equal(images[[3, 7, 11]], firsts[[1, 2, 0]])
    assert len(gif_frames(gif)) == 9  # 3 pairs x 3 steps: the joints and the loop's end appear once


def test_explore(gen: Callable[..., list[Path]]) -> None:
    dims, walk_png, walk_gif = gen(
        "mode=explore", "explore.index=2", "explore.dims=[0,5]", "explore.steps=3", "explore.walk_steps=4", "seed=1"
    )
    assert dims.name == "explore-best-seed1-2-dims.png"
    varied = cells(dims, 3)
    assert varied.shape == (6, S, S)
    assert len({v.tobytes() for v in varied}) > 1  # the dimensions change the image
    walk = cells(walk_png, 2)
    assert walk.shape == (4, S, S)
    # The walk starts at latent 2 of seed 1: image 2 of `grid seed=1`.
    assert np.array_equal(walk[0], grid_images(gen, 1, 3)[2])
    frames = gif_frames(walk_gif)
    assert len(frames) == 4 and np.array_equal(frames[0][::5, ::5], walk[0])


def test_explore_refuses_dimensions_outside_the_latent(gen: Callable[..., list[Path]]) -> None:
    with pytest.raises(UserInputError, match=r"explore.dims \[100\] are outside the latent's 0..99"):
        gen("mode=explore", "explore.dims=[1,100]")


@pytest.mark.slow
def test_progress(gen: Callable[..., list[Path]], smoke_run: Path, tmp_path: Path) -> None:
    gif, strip = gen("mode=progress")
    assert (gif.name, strip.name) == ("progress.gif", "progress-strip.png")
    grid_px = 4 * S + 5 * PAD  # 16 fixed samples
    with Image.open(gif) as img:
        assert img.n_frames == 2 and img.size == (grid_px, grid_px + 16)  # one frame per epoch, labelled
    with Image.open(strip) as img:
        assert img.size == (2 * grid_px + 4, grid_px + 16)
    frames = gif_frames(gif)
    epoch2 = np.asarray(Image.open(smoke_run / "samples" / "epoch_0002.png").convert("L"))
    assert np.array_equal(frames[1][16:], epoch2)


@pytest.mark.slow
def test_progress_needs_epoch_grids(tmp_path: Path, smoke_run: Path) -> None:
    with pytest.raises(UserInputError, match="holds no epoch_.*png grids"):
        generate(compose_generate("mode=progress", f"checkpoint={tmp_path}"))


def test_report_from_tensorboard(
    gen: Callable[..., list[Path]], smoke_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each plot draws the run's own numbers: the logged losses and D outputs (read here with
    TensorBoard's own reader), the FID of each evaluation, the last class histogram."""
    from matplotlib.axes import Axes
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    drawn: list[tuple[Axes, str, list[list[float]]]] = []  # (axes, "plot" or "bar", [x, y])

    def recording(method: str) -> Callable[..., object]:
        original = getattr(Axes, method)

        def draw(ax: Axes, x: object, y: object, *args: object, **kwargs: object) -> object:
            drawn.append((ax, method, [np.asarray(v, dtype=float).tolist() for v in (x, y)]))
            return original(ax, x, y, *args, **kwargs)

        return draw

    for method in ("plot", "bar"):
        monkeypatch.setattr(Axes, method, recording(method))
    written = gen("mode=report")
    names = ["report-losses.png", "report-d.png", "report-fid.png", "report-classes.png"]
    assert [p.name for p in written] == names
    for path in written:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == ((1100, 450) if path.name == names[-1] else (800, 450))

    def plotted(title: str) -> list[list[list[float]]]:
        return [xy for ax, method, xy in drawn if method == "plot" and ax.get_title().startswith(title)]

    logs = EventAccumulator(str(smoke_run / "tensorboard")).Reload()
    for title, tags in (("Losses", LOSS_TAGS), ("Discriminator outputs", D_TAGS)):
        logged = [[[e.step for e in logs.Scalars(t)], [e.value for e in logs.Scalars(t)]] for t in tags]
        assert plotted(title)[::2] == logged  # each series, then its moving average
    evaluations = [json.loads(line) for line in (smoke_run / "fid.jsonl").read_text().splitlines()][:-1]
    assert plotted("FID:") == [[[r["epoch"] for r in evaluations], [r["fid"] for r in evaluations]]]
    histogram = json.loads((smoke_run / "classes.jsonl").read_text().splitlines()[-1])["class_histogram"]
    [heights] = [y for _, method, (_, y) in drawn if method == "bar"]
    assert heights == pytest.approx([c / sum(histogram) for c in histogram])


def test_report_from_csv_logs(tmp_path: Path) -> None:
    """A run trained with logger=csv: plots from csv/metrics.csv; no fid.jsonl, no FID plot."""
    (tmp_path / "csv").mkdir()
    tags = ["train/d_loss", "train/d_real", "train/d_fake", "train/g_loss"]
    with (tmp_path / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", *tags, "time/epoch_s"])
        for step in range(0, 300, 3):
            writer.writerow([0, step, *(math.sin(step + i) for i in range(4)), ""])
        writer.writerow([0, 299, "", "", "", "", 12.5])
    scalars = read_scalars(tmp_path)
    assert scalars["train/g_loss"][0].tolist() == list(range(0, 300, 3))
    assert scalars["time/epoch_s"][1].tolist() == [12.5]
    written = write_report(tmp_path, tmp_path / "out")
    assert [p.name for p in written] == ["report-losses.png", "report-d.png"]


def test_report_needs_logs(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="has no training logs"):
        write_report(tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("interpolate.seeds=[3]",), "interpolate.seeds=\\[3\\] must be a list of 2 or more integer seeds"),
        (("interpolate.method=cubic",), "interpolate.method='cubic' is not known; choose one of linear, slerp, both"),
        (("device=tpu",), "device='tpu' is not a device"),
        (("batch_size=0",), "batch_size=0 must be an integer >= 1"),
        (("ema=maybe",), "ema='maybe' must be true or false"),
        (("mode=explore", "explore.range=wide"), "explore.range='wide' must be a number > 0"),
        (("mode=explore", "explore.walk_step_size=0"), "explore.walk_step_size=0 must be a number > 0"),
        (("mode=progress", "progress.strip_frames=all"), "progress.strip_frames='all' must be an integer >= 1"),
    ],
)
def test_bad_settings(gen: Callable[..., list[Path]], overrides: tuple[str, ...], message: str) -> None:
    mode = () if any(o.startswith("mode=") for o in overrides) else ("mode=interpolate",)
    with pytest.raises(UserInputError, match=message):
        gen(*mode, *overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu(gen: Callable[..., list[Path]]) -> None:
    with pytest.raises(UserInputError, match="PyTorch sees no CUDA GPU; use device=cpu"):
        gen("device=cuda")


# -- writing safely ---------------------------------------------------------------------------------


def test_interrupted_folder_write_keeps_the_old_folder(tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "old.png").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(folder) as tmp:
        (tmp / "new.png").write_text("new")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["samples"]
    assert [p.name for p in folder.iterdir()] == ["old.png"]


def test_a_full_disk_or_a_file_in_the_way_of_a_folder_write_is_one_clear_error(
    tmp_path: Path, gen: Callable[..., list[Path]]
) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "old.png").write_text("old")
    full = f"could not write {folder}: No space left on device .the previous folder is intact."
    with pytest.raises(OutputError, match=full), atomic_dir(folder) as tmp:
        (tmp / "new.png").write_text("new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert [p.name for p in tmp_path.iterdir()] == ["samples"]
    assert [p.name for p in folder.iterdir()] == ["old.png"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for mode in ("samples", "grid"):
        with pytest.raises(OutputError, match=f"could not create the folder {blocker / 'sub' / 'out'} for "):
            gen(f"mode={mode}", "samples.num_images=4", "samples.npz=true", out="a-file/sub/out")


def test_npz_writer_refuses_a_short_write(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="3 images written, 4 announced"),
        NpzWriter(tmp_path / "x.npz", (4, 2, 2, 1)) as w,
    ):
        w.write(torch.zeros(3, 1, 2, 2, dtype=torch.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_truncated_checkpoint_names_the_file(smoke_run: Path, tmp_path: Path) -> None:
    data = (smoke_run / "checkpoints" / "last.ckpt").read_bytes()
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=f"{truncated} is not a readable checkpoint .* may be truncated"):
        generate(compose_generate(f"checkpoint={truncated}", f"out_dir={tmp_path}"))


def test_generate_refuses_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        generate(compose_generate(f"checkpoint={tmp_path / 'nope.ckpt'}", f"out_dir={tmp_path}"))
    with pytest.raises(UserInputError, match="^mode='video' is not known; choose one of grid, samples, interpolate"):
        generate(compose_generate("mode=video", f"checkpoint={tmp_path}"))
    with pytest.raises(UserInputError, match="^required setting.s. not given: checkpoint"):
        generate(compose_generate())


@pytest.mark.slow
def test_fid_without_weights_names_generates_own_setting(smoke_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"nope.pth does not exist; set fid.weights=<file>") as info:
        generate(compose_generate("mode=fid", f"checkpoint={smoke_run}", f"fid.weights={tmp_path / 'nope.pth'}"))
    assert "eval." not in str(info.value)  # train.py's settings


@pytest.mark.slow
def test_fid_of_fewer_images_than_precision_and_recall_need(smoke_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"^fid.num_samples=2 must be an integer >= 4 \(precision and recall"):
        generate(compose_generate("mode=fid", f"checkpoint={smoke_run}", "fid.num_samples=2"))
    out = tmp_path / "fid.json"
    overrides = ("fid.num_samples=2", "fid.precision_recall=false", "fid.reference_samples=64", f"fid.out={out}")
    generate(compose_generate("mode=fid", f"checkpoint={smoke_run}", *overrides))
    assert json.loads(out.read_text())["num_samples"] == 2
