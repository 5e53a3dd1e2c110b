"""tools/fetch_twemoji.py: the RGB image folder, from a package of the npm registry."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from dcgan.datasets.folder import find_images, folder_classes
from tools import fetch_twemoji
from tools.fetch_twemoji import main

# emoji.json's shape: categories, skin tones, emoji without a Twitter image, the swatches.
TABLE = [
    {"image": "1f600.png", "category": "Smileys & Emotion", "has_img_twitter": True},
    {
        "image": "1f44b.png",
        "category": "People & Body",
        "has_img_twitter": True,
        "skin_variations": {
            "1F3FB": {"image": "1f44b-1f3fb.png", "has_img_twitter": True},
            "1F3FC": {"image": "1f44b-1f3fc.png", "has_img_twitter": False},
        },
    },
    {"image": "1fae8.png", "category": "Smileys & Emotion", "has_img_twitter": False},
    {"image": "1f3fb.png", "category": "Component", "has_img_twitter": True},
]


def package(tmp_path: Path) -> Path:
    """A tarball laid out as emoji-datasource-twitter's, with RGBA 64x64 images."""
    members: dict[str, bytes] = {"package/emoji.json": json.dumps(TABLE).encode()}
    for name in ("1f600.png", "1f44b.png", "1f44b-1f3fb.png", "1f44b-1f3fc.png", "1fae8.png", "1f3fb.png"):
        png = io.BytesIO()
        Image.new("RGBA", (64, 64), (200, 40, 40, 128)).save(png, format="PNG")
        members[f"package/img/twitter/64/{name}"] = png.getvalue()
    path = tmp_path / "package.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_writes_one_folder_per_category_that_dataset_folder_reads_with_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tarball = package(tmp_path)
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    monkeypatch.setattr(fetch_twemoji, "INTEGRITY", f"sha512-{digest}")
    monkeypatch.setattr(fetch_twemoji, "EXPECTED", 3)
    out = tmp_path / "twemoji"
    assert main(["--out", str(out), "--tarball", str(tarball)]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    # Skin tones with an image are kept; no image, or a swatch (Component), is left out.
    assert written == ["people_body/1f44b-1f3fb.png", "people_body/1f44b.png", "smileys_emotion/1f600.png"]
    assert not out.with_name("twemoji.partial").exists()
    assert "wrote 3 Twemoji images" in capsys.readouterr().out
    assert folder_classes(out, find_images(out)[0]) == (["people_body", "smileys_emotion"], [0, 0, 1])
    # A second fetch leaves the folder as it is.
    (out / "people_body" / "1f44b.png").touch()
    before = (out / "people_body" / "1f44b.png").stat().st_mtime_ns
    assert main(["--out", str(out), "--tarball", str(tmp_path / "absent.tgz")]) == 0
    assert (out / "people_body" / "1f44b.png").stat().st_mtime_ns == before
    assert "already holds" in capsys.readouterr().out


def test_another_file_is_refused_by_its_digest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "twemoji"
    assert main(["--out", str(out), "--tarball", str(package(tmp_path))]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: " + str(tmp_path / "package.tgz") + (
        " is not emoji-datasource-twitter@16.0.0 (its SHA-512 differs from the registry's)"
    )
    assert not out.exists()
    assert main(["--out", str(out), "--tarball", str(tmp_path / "absent.tgz")]) == 1
    assert "cannot read --tarball" in capsys.readouterr().err
