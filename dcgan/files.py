"""File writing that never leaves a half-written file behind: PNGs, GIFs, npz, folders."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image
from torch import Tensor

from dcgan.errors import OutputError

# errno values that mean "this location cannot take the file", not a bug in the writer.
_OUTPUT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EIO,
}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block finishes, flush it to disk and
    rename it onto ``path``. A crash, ``kill -9`` or Ctrl-C mid-write leaves the previous
    ``path`` untouched (rename is atomic within a filesystem), and so does a full disk: that
    raises ``OutputError`` naming the file, and the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    _make_parent(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename, so a power cut cannot leave an empty file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if (error := _output_error(e, path, "file")) is None:
            raise
        raise error from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a file where a folder should be
        raise OutputError(f"could not create the folder {path.parent} for {path.name}: {e.strerror or e}") from e


def _output_error(e: OSError, path: Path, kind: str) -> OutputError | None:
    """``e`` as an ``OutputError`` naming ``path`` when the location cannot take it (a full
    disk, no permission); None for other errors (a bug in the writer), to be raised as they are."""
    if isinstance(e, OutputError) or e.errno not in _OUTPUT_ERRNOS:
        return None
    kept = f"the previous {kind} is intact" if path.exists() else "nothing was written"
    return OutputError(
        f"could not write {path}: {e.strerror or e} ({kept}); free some disk space or choose a writable output folder"
    )


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block finishes, it replaces ``path``
    (and whatever an earlier run left there) in one rename. A crash or Ctrl-C mid-way leaves
    the previous ``path`` untouched and no half-filled folder."""
    path = Path(path)
    _make_parent(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        moved = path.exists()
        if moved:
            path.rename(old)
        try:
            tmp.rename(path)
        except OSError:
            if moved:
                old.rename(path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if (error := _output_error(e, path, "folder")) is None:
            raise
        raise error from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_png(image: Image.Image, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="png")
    return Path(path)


def save_gif(frames: Sequence[Image.Image], path: str | Path, frame_ms: int, scale: int = 1) -> Path:
    """An animated GIF that loops forever, ``frame_ms`` per frame, each frame upscaled ``scale``
    times (nearest neighbour: small images stay sharp)."""
    if scale > 1:
        frames = [f.resize((f.width * scale, f.height * scale), Image.Resampling.NEAREST) for f in frames]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="gif", save_all=True, append_images=list(frames[1:]), duration=frame_ms, loop=0)
    return Path(path)


class NpzWriter:
    """Streams uint8 images into an ``.npz`` holding one array ``arr_0`` (N, H, W, C), written
    batch by batch so N = 50,000 never sits in memory; the layout of ``np.savez(path, images)``
    that FID tools read. ``labels`` (N,), if given, are stored as a second array ``labels``.
    The file appears only when all N images have been written."""

    def __init__(self, path: str | Path, shape: tuple[int, int, int, int], labels: np.ndarray | None = None) -> None:
        self.path, self.shape, self.written = Path(path), shape, 0
        self.labels = labels
        self._atomic = atomic_path(self.path)

    def __enter__(self) -> NpzWriter:
        tmp = self._atomic.__enter__()
        try:
            self._zip = zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
            self._file = self._zip.open("arr_0.npy", "w", force_zip64=True)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
            np.lib.format.write_array_header_1_0(self._file, header | {"shape": self.shape})
        except BaseException as e:
            # Removes the temporary file and raises an OSError of a full disk as OutputError.
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def write(self, images: Tensor) -> None:
        """uint8 images (B, C, H, W)."""
        self._file.write(images.permute(0, 2, 3, 1).contiguous().cpu().numpy().tobytes())
        self.written += len(images)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._file.close()
        if exc_type is None and self.labels is not None:
            with self._zip.open("labels.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, self.labels, allow_pickle=False)
        self._zip.close()
        if exc_type is None and self.written != self.shape[0]:
            exc = RuntimeError(f"{self.path}: {self.written} images written, {self.shape[0]} announced")
            self._atomic.__exit__(type(exc), exc, None)
            raise exc
        self._atomic.__exit__(exc_type, exc, tb)
