"""``python tools/fetch_twemoji.py [--out DIR] [--tarball FILE]``: a real RGB image folder.

Twitter's emoji (Twemoji 15, graphics under CC-BY 4.0: credit "Twemoji by Twitter, Inc and
other contributors", https://github.com/jdecked/twemoji), 64x64 RGBA PNGs, as the npm registry
ships them in the package emoji-datasource-twitter 16.0.0. Writes the 3,781 images (every emoji
and skin tone, the five bare skin-tone swatches left out) into one top-level subfolder per
Unicode category (9: activities, animals_nature, ..., travel_places): a folder
``dataset=folder`` reads with classes (``model.num_classes=auto``) or without.

The package (62 MB) comes from https://registry.npmjs.org, or from ``--tarball``, a file that
``npm pack emoji-datasource-twitter@16.0.0`` fetched; either is checked against the registry's
SHA-512. Default ``--out``: ``$DCGAN_DATA_DIR/twemoji`` (else ``data/twemoji``). A folder that
already holds the set is left as it is.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "emoji-datasource-twitter"
VERSION = "16.0.0"
URL = f"https://registry.npmjs.org/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz"
INTEGRITY = "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ=="
IMAGES = "package/img/twitter/64/"
# The skin-tone swatches (Unicode's "Component" category) are colour squares, not emoji.
LEFT_OUT = {"Component"}
EXPECTED = 3781


class FetchError(Exception):
    """What went wrong, in one line for the user."""


def category_folder(category: str) -> str:
    """``"Smileys & Emotion"`` -> ``"smileys_emotion"``."""
    return re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except OSError as e:
        raise FetchError(
            f"cannot download {url}: {e}. Offline: fetch the package elsewhere "
            f"(npm pack {PACKAGE}@{VERSION}) and pass it with --tarball"
        ) from e


def check_integrity(data: bytes, source: str) -> None:
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise FetchError(f"{source} is not {PACKAGE}@{VERSION} (its SHA-512 differs from the registry's)")


def emoji_images(tarball: bytes) -> dict[str, str]:
    """Image file name -> category folder, for every emoji and skin tone with a Twitter image."""
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        member = tar.extractfile("package/emoji.json")
        assert member is not None
        table = json.load(member)
    images: dict[str, str] = {}
    for emoji in table:
        if emoji["category"] in LEFT_OUT:
            continue
        for variant in [emoji, *emoji.get("skin_variations", {}).values()]:
            if variant.get("has_img_twitter"):
                images[variant["image"]] = category_folder(emoji["category"])
    return images


def write_folder(tarball: bytes, out: Path) -> int:
    """Write the images into ``out``/<category>/ (through a temporary folder beside it, so an
    interrupted fetch leaves no half set); returns how many."""
    images = emoji_images(tarball)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    written = 0
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix(IMAGES)
            if not member.name.startswith(IMAGES) or name not in images:
                continue
            source = tar.extractfile(member)
            assert source is not None
            target = partial / images[name] / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read())
            written += 1
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return written


def count_images(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*/*.png")) if folder.is_dir() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(os.environ.get("DCGAN_DATA_DIR", "data")) / "twemoji"
    parser.add_argument("--out", type=Path, default=default_out, help=f"the folder to write (default {default_out})")
    parser.add_argument("--tarball", type=Path, help=f"{PACKAGE}-{VERSION}.tgz from npm pack, instead of downloading")
    args = parser.parse_args(argv)
    out: Path = args.out.expanduser()
    try:
        if count_images(out) == EXPECTED:
            print(f"{out} already holds the {EXPECTED} Twemoji images")
            return 0
        if args.tarball is not None:
            try:
                tarball = args.tarball.read_bytes()
            except OSError as e:
                raise FetchError(f"cannot read --tarball {args.tarball}: {e.strerror or e}") from e
        else:
            print(f"downloading {URL} (62 MB)", file=sys.stderr)
            tarball = download(URL)
        check_integrity(tarball, str(args.tarball or URL))
        written = write_folder(tarball, out)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {written} Twemoji images (64x64 RGBA, CC-BY 4.0: Twemoji by Twitter, Inc and other "
        f"contributors) into {out}/<category>/; train with dataset=folder dataset.path={out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
