"""The photo gatherer (examples/gather_photos.py) on small fake package folders, a tiny `.rcc` and `.otp` built here."""

import argparse
import bz2
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, load_script

gather_photos = load_script("examples/gather_photos.py")


def photo(seed: int, size: tuple[int, int] = (520, 400)) -> Image.Image:
    """A colourful, textured image that passes the gatherer's photo checks; distinct for each seed."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(coarse) + noise, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_rcc(path: Path, files: dict[str, bytes], compress: set[str], version: int = 3) -> None:
    """A Qt binary resource file (the layout `read_rcc` documents) holding `files` (nested folders allowed)."""
    tree: dict = {}
    for relative, content in files.items():
        node = tree
        *folders, name = relative.split("/")
        for folder in folders:
            node = node.setdefault(folder, {})
        node[name] = content

    names, data = bytearray(), bytearray()
    name_offsets: dict[str, int] = {}

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(name), 0) + encoded)
        return name_offsets[name]

    # Breadth-first node table: a directory's children occupy consecutive indices.
    nodes: list[bytes] = []
    node_size = 22 if version >= 2 else 14
    queue: list[tuple[str, object, str]] = [("", tree, "")]
    order: list[tuple[str, object, str]] = []
    while queue:
        entry = queue.pop(0)
        order.append(entry)
        if isinstance(entry[1], dict):
            queue += [(name, child, f"{entry[2]}/{name}".lstrip("/")) for name, child in sorted(entry[1].items())]
    next_index = 1
    for name, content, relative in order:
        offset = name_offset(name) if name else 0
        if isinstance(content, dict):
            record = struct.pack(">IHII", offset, 2, len(content), next_index)
            next_index += len(content)
        else:
            flags = 1 if relative in compress else 0
            payload = struct.pack(">I", len(content)) + zlib.compress(content) if flags else content
            record = struct.pack(">IHHHI", offset, flags, 0, 0, len(data))
            data.extend(struct.pack(">I", len(payload)) + payload)
        nodes.append(record + b"\0" * (node_size - len(record)))
    header_size = 20
    tree_offset = header_size
    data_offset = tree_offset + node_size * len(nodes)
    names_offset = data_offset + len(data)
    header = b"qres" + struct.pack(">IIII", version, tree_offset, data_offset, names_offset)
    path.write_bytes(header + b"".join(nodes) + bytes(data) + bytes(names))


def test_rcc_reader_reads_nested_compressed_and_plain_entries(tmp_path):
    files = {"a/b/one.webp": b"first" * 50, "a/two.txt": b"second", "top.bin": bytes(range(200))}
    for version in (1, 3):
        path = tmp_path / f"v{version}.rcc"
        write_rcc(path, files, compress={"a/b/one.webp"}, version=version)
        assert gather_photos.read_rcc(path) == files


def test_rcc_reader_refuses_other_files(tmp_path):
    path = tmp_path / "bad.rcc"
    path.write_bytes(b"PK\x03\x04 not a resource file")
    with pytest.raises(ValueError, match="not a Qt resource file"):
        gather_photos.read_rcc(path)


def test_gcompris_readme_gives_each_file_its_licence():
    readme = (
        "Copyright: Someone, 2020\nLicense: CC-BY-SA 4.0\nFiles:\nmap.svg\n\n"
        "Copyright: Ann\nSource: https://example.org/a.jpg\nLicense: CC0\nFiles: alpaca.webp\n\n"
        "Copyright: Bob\nLicense: Public Domain\nSource: https://example.org/b.jpg\nFiles:\nwonders/b.webp\nc.webp\n"
    )
    entries = gather_photos.gcompris_licenses(readme)
    assert entries["alpaca.webp"] == {"author": "Ann", "license": "CC0", "source": "https://example.org/a.jpg"}
    assert entries["b.webp"]["license"] == entries["c.webp"]["license"] == "Public Domain"
    assert entries["map.svg"]["source"] == ""


def fake_packages(root: Path) -> Path:
    """`dpkg -x`-like folders of a few surveyed packages plus an imgaug wheel; returns the folder of packages."""
    packages = root / "extracted"
    # GCompris: one activity whose .rcc holds two photos (one compressed), a README and a drawing.
    rcc_dir = packages / "gcompris-qt-data" / gather_photos.GCOMPRIS_RCC_DIR
    rcc_dir.mkdir(parents=True)
    readme = b"Copyright: Ann\nLicense: CC0\nSource: https://example.org/a\nFiles: alpaca.webp\n"
    write_rcc(
        rcc_dir / "erase.rcc",
        {
            "gcompris/src/activities/erase/resource/alpaca.webp": encode(photo(1), "WEBP"),
            "gcompris/src/activities/erase/resource/bee.webp": encode(photo(2), "WEBP"),
            "gcompris/src/activities/erase/resource/README": readme,
            "gcompris/src/activities/erase/resource/square.svg": b"<svg/>",
        },
        compress={"gcompris/src/activities/erase/resource/alpaca.webp"},
    )
    # kphotoalbum: two demo photos, one rotated by 90 degrees in index.xml.
    demo = packages / "kphotoalbum" / "usr/share/kphotoalbum/demo"
    demo.mkdir(parents=True)
    photo(3, (600, 400)).save(demo / "upright.jpg", quality=95)
    photo(4, (600, 400)).save(demo / "turned.jpg", quality=95)
    (demo / "index.xml").write_text(
        '<KPhotoAlbum><images><image file="upright.jpg"/><image file="turned.jpg" angle="90"/></images></KPhotoAlbum>'
    )
    # LibreOffice: a template whose Pictures/ holds one matching photo and one that the patterns leave out.
    template_dir = packages / "libreoffice-common" / gather_photos.LIBREOFFICE_TEMPLATE_DIR
    template_dir.mkdir(parents=True)
    with zipfile.ZipFile(template_dir / "Candy.otp", "w") as bundle:
        bundle.writestr("Pictures/1000000000000780AAAA.png", encode(photo(5), "PNG"))
        bundle.writestr("Pictures/10000000000004A8BBBB.png", encode(photo(6), "PNG"))
        bundle.writestr("content.xml", "<office/>")
    # scipy's raw face, and a duplicate of a kphotoalbum photo in another package.
    face = packages / "python3-scipy" / gather_photos.SCIPY_FACE
    face.parent.mkdir(parents=True)
    face.write_bytes(bz2.compress(np.asarray(photo(7, (1024, 768))).tobytes()))
    kodi = packages / "kodi-data" / "usr/share/kodi/addons/skin.estuary/extras/home-images"
    kodi.mkdir(parents=True)
    photo(3, (600, 400)).save(kodi / "movie.jpg", quality=95)
    # A wheel with imgaug's quokka.
    with zipfile.ZipFile(root / "imgaug-0.4.0-py2.py3-none-any.whl", "w") as wheel:
        wheel.writestr("imgaug/quokka.jpg", encode(photo(8), "JPEG"))
    return packages


def test_gatherer_end_to_end_on_fake_packages(tmp_path):
    packages = fake_packages(tmp_path)
    roots = {packages / name: name for name in ("gcompris-qt-data", "kphotoalbum", "libreoffice-common",
                                                 "python3-scipy", "kodi-data")}
    candidates = gather_photos.photo_candidates(roots, tmp_path / "scratch", tmp_path)
    names = sorted(f"{c.package}/{c.name}" for c in candidates)
    assert names == sorted([
        "gcompris-qt-data/erase_alpaca", "gcompris-qt-data/erase_bee", "kphotoalbum/upright", "kphotoalbum/turned",
        "libreoffice-common/Candy_00000780AAAA", "python3-scipy/face", "kodi-data/movie", "imgaug/quokka",
    ])  # the drawing (svg), the README and the Candy picture outside the patterns are left out
    alpaca = next(c for c in candidates if c.name == "erase_alpaca")
    assert alpaca.license == "CC0 (Ann, https://example.org/a)"

    turned = next(c for c in candidates if c.name == "turned")
    assert turned.rotation == 90 and turned.open().size == (400, 600)

    output, pack = tmp_path / "corpus", tmp_path / "pack"
    # The script extracts .deb files itself (`dpkg -x`); these packages are extracted already, so call its parts.
    args = argparse.Namespace(exclude=[], max_side=1024, min_side=256, format="jpg", output_dir=output)
    records, skipped = gather_photos.gather(candidates, args)
    assert [entry["reason"] for entry in skipped] == ["duplicate"]  # kodi's movie.jpg repeats a demo photo
    assert len(records) == 7 and all(record["kind"] == "photo" for record in records)
    assert next(r for r in records if r["file"].endswith("turned.jpg"))["rotation"] == 90

    packed = gather_photos.write_pack(records, output, pack, short_side=300, quality=85, kinds={"photo"})
    assert len(packed) == 7
    for record in packed:
        with Image.open(pack / record["file"]) as image:
            assert min(image.size) == 300 and image.format == "JPEG"
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["short_side"] == 300 and len(manifest["images"]) == 7


def test_gatherer_cli_runs_on_a_folder_without_debs(tmp_path):
    empty = tmp_path / "debs"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples/gather_photos.py"), str(tmp_path / "out"), "--no-skimage",
         "--extract-debs", str(empty)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1 and "No wallpapers found" in result.stdout
