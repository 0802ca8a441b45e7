"""Gather freely licensed photos into one folder for `SyntheticReflectionDataset`.

Sources:

* scikit-image's bundled sample photos (only natural color photos), if scikit-image is installed.
* Desktop wallpapers from Debian packages (mate-backgrounds, gnome-backgrounds, ukui-wallpapers,
  plasma-workspace-wallpapers), either installed (`/usr/share/backgrounds`, `/usr/share/wallpapers`) or
  extracted without installing from `.deb` files::

      mkdir -p /tmp/debs && cd /tmp/debs && apt-get download mate-backgrounds gnome-backgrounds \\
          ukui-wallpapers plasma-workspace-wallpapers
      python examples/gather_photos.py photos/ --extract-debs /tmp/debs

* Real photographs from the Debian packages (and one PyPI wheel) that the photo survey of 2026-12-02 found
  (`PHOTO_SOURCES`: GCompris' monuments, animals, musicians and underwater scenes, kphotoalbum's demo photos,
  Tux Paint's and Tux Typing's landscapes, LXQt's photo wallpapers, OpenCV's sample photos, LibreOffice's
  template photos, Scratch's 480x360 stage backgrounds, and a dozen single photos), extracted from the same `.deb` folder plus imgaug's wheel::

      apt-get download gcompris-qt-data kphotoalbum opencv-doc tuxpaint-data tuxtype-data lxqt-themes \\
          scribus-template libreoffice-common palapeli-data gimp-help-en hugin-data kodi-data \\
          python-kivy-examples python3-scipy digikam-data sddm-theme-maldives kstars-data gimp-data \\
          python-matplotlib-data qtbase5-examples qtdeclarative5-examples scratch
      pip download --no-deps imgaug==0.4.0     # into the same folder: its quokka.jpg

  Readers for the formats they come in: Qt `.rcc` resource files (GCompris; each photo's author, source and
  licence from the README beside it), zipped LibreOffice templates (`.otp`), scipy's raw `face.dat`, and
  kphotoalbum's `index.xml` rotations.

Every image is converted to RGB, downscaled to a bounded long side, and saved as JPEG (or PNG). SVGs,
grayscale, flat, transparent and small images are skipped, and exact and near duplicates (the same wallpaper at
several resolutions) are dropped. `manifest.json` records each file's source, original path, sizes, package and
license and whether it is a real photograph (`kind`: "photo") or a desktop wallpaper of a package that mixes
photos and graphics ("wallpaper"); the packages' copyright files are copied to `licenses/`. `--pack DIR` then
writes the compact training pack: every saved image downscaled to `--pack-short-side` as JPEG, with its manifest. Many wallpapers are abstract graphics rather
than photos: review the output, or leave folders out with `--exclude`.
"""

from __future__ import annotations

import argparse
import bz2
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import sys
import struct
import tempfile
import xml.etree.ElementTree as ElementTree
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEBIAN_PACKAGES = ("mate-backgrounds", "gnome-backgrounds", "ukui-wallpapers", "plasma-workspace-wallpapers")
WALLPAPER_DIRS = ("usr/share/backgrounds", "usr/share/wallpapers")
RASTER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# The wallpapers (package/name as saved) that are real photographs, chosen by eye on a contact sheet of all 74
# gathered wallpapers (2026-12-02); the others are abstract graphics, renders and paintings.
WALLPAPER_PHOTOS = frozenset(
    [f"mate-backgrounds/mate_nature_{name}" for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")]
    + [f"plasma-workspace-wallpapers/{name}_contents_images_{size}" for name, size in (
        ("BytheWater", "2560x1600"), ("DarkestHour", "2560x1600"), ("EveningGlow", "2560x1600"),
        ("FallenLeaf", "2560x1600"), ("Kite", "2560x1600"), ("OneStandsOut", "2560x1600"), ("Path", "2560x1600"),
        ("Volna", "5120x2880"), ("summer_1am", "2560x1600"))]
)
# Real photographs in Debian packages (survey of 2026-12-02): package -> (globs under the extracted package root,
# licence of the images). GCompris, LibreOffice, scipy and imgaug need readers (below) and are listed apart.
PHOTO_SOURCES: dict[str, tuple[tuple[str, ...], str]] = {
    "kphotoalbum": (("usr/share/kphotoalbum/demo/*.jpg",), "GPL-2+ (package)"),
    "tuxpaint-data": (("usr/share/tuxpaint/templates/*.jpg",), "GPL-2+; photos by Bill Kendrick (AUTHORS.txt)"),
    "tuxtype-data": (("usr/share/tuxtype/images/kcas*.jpg",), "GPL-2 (package); from Wikimedia Commons per README"),
    "lxqt-themes": (
        tuple(
            f"usr/share/lxqt/wallpapers/{name}"
            for name in (
                "flowers.png", "fog.jpg", "after-the-rain.jpg", "Butterfly-Kenneth-Wimer.jpg", "beam.png",
                "Valendas.png", "appleflower.png", "cloud.png", "drop.png", "this-is-not-windows.jpg", "butterfly.png",
            )
        ),
        "LGPL-2.1+ (package)",
    ),
    "opencv-doc": (
        ("usr/share/doc/opencv-doc/examples/text/scenetext0[1-5].jpg",)
        + tuple(
            f"usr/share/doc/opencv-doc/examples/data/{name}"
            for name in (
                "baboon.jpg", "leuvenA.jpg", "leuvenB.jpg", "ela_original.jpg", "aloeL.jpg", "orange.jpg",
                "apple.jpg", "building.jpg", "chicky_512.png", "graf1.png", "graf3.png", "sudoku.png",
            )
        ),
        "Apache-2.0 AND BSD-3-Clause (package)",
    ),
    "scribus-template": (
        tuple(
            f"usr/share/scribus/templates/{name}.jpg"
            for name in ("br2/moon", "br2/brightness", "br2/halfmoon", "br2/sunset", "br2/nature", "cal2/moon",
                         "menu2/pizza")
        ),
        "public domain (Riku Leino)",
    ),
    "palapeli-data": (("usr/share/palapeli/collection/*.jpg",), "public domain or GFDL (see its .desktop files)"),
    "gimp-help-en": (
        tuple(
            f"usr/share/gimp/2.0/help/en/images/tutorials/tone-mapping/{name}.jpg"
            for name in ("apple-orchard-truck-from-camera", "power-lines", "tree-exposed-for-sky-ground-is-dark",
                         "without-bilateral-smoothing-of-mask")
        ),
        "GFDL-NIV-1.2+",
    ),
    "hugin-data": (
        ("usr/share/hugin/xrc/data/help_en_EN/CA_tCA00.jpg",
         "usr/share/hugin/xrc/data/help_en_EN/Medinet_habu_horizontal_fisheye.jpg"),
        "GPL-2+ (package)",
    ),
    "kodi-data": (("usr/share/kodi/addons/skin.estuary/extras/home-images/*.jpg",), "CC0-1.0"),
    "python-kivy-examples": (
        ("usr/share/kivy-examples/demo/pictures/images/faust_github.jpg",
         "usr/share/kivy-examples/demo/pictures/images/Wall.jpg"),
        "Expat (package)",
    ),
    "digikam-data": (("usr/share/digikam/about/images/body-background.jpg",), "GPL-2+ (package)"),
    "sddm-theme-maldives": (("usr/share/sddm/themes/maldives/background.jpg",), "CC-BY-3.0 (Nevit Dilmen, Wikimedia)"),
    "kstars-data": (("usr/share/kstars/kstarslite/qml/images/splash_bg@4x.jpeg",), "GPL-2+ (package)"),
    # Scratch 1.4's stage backgrounds, 480x360 (the survey's "near misses under 512 px"): the photographs among them,
    # chosen by eye on a contact sheet of all 61 JPEGs (2026-12-04); party-room, room1-3, spotlight-stage,
    # brick-wall1 and school2 are drawings, and the GIF and PNG backgrounds are drawings too.
    "scratch": (
        tuple(
            f"usr/share/scratch/Media/Backgrounds/{folder}/{name}.jpg"
            for folder, names in (
                ("Indoors", ("chalkboard", "clothing-store", "hall", "kitchen", "the-movies-inside")),
                ("Nature", ("beach-malibu", "canyon", "flower-bed", "forest", "garden-rock", "grand-canyon",
                            "gravel-desert", "hill", "lake", "moon", "pathway", "tree", "water-and-rocks", "wave",
                            "woods-and-bench")),
                ("Outdoors", ("all-sports-mural", "atom-playground", "bench-with-view", "berkeley-mural", "boardwalk",
                              "brick-wall-and-stairs", "brick-wall2", "building-at-mit", "building-fireproof",
                              "castle", "city-with-water", "city-with-water2", "driveway", "graffiti",
                              "hallway_outdoors", "hay_field", "houses", "mansion", "mural-faro", "parking-ramp",
                              "pool", "route66", "silos", "the-movies", "train-tracks1", "train-tracks2", "village",
                              "wooden-house")),
                ("Sports", ("baseball-field", "basketball-court1-a", "basketball-court1-b", "football-field",
                            "playing-field", "tennis-backboard")),
            )
            for name in names
        ),
        "CC-BY-SA-3.0 (MIT, Scratch media)",
    ),
    "gimp-data": (("usr/share/gimp/2.0/images/gimp-splash.png",), "GPL-3+/CC-BY-SA/CC0 (desktop images)"),
    "python-matplotlib-data": (
        ("usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg",), "public domain (US Navy)"
    ),
    "qtbase5-examples": (
        ("usr/lib/x86_64-linux-gnu/qt5/examples/widgets/painting/composition/flower.jpg",), "LGPL-3 or GPL-2"
    ),
    "qtdeclarative5-examples": (
        ("usr/lib/x86_64-linux-gnu/qt5/examples/quick/customitems/scrollbar/pics/niagara_falls.jpg",),
        "LGPL-3 or GPL-2+",
    ),
}
# GCompris activities whose `.rcc` holds photos, and which of their webp files are photos.
GCOMPRIS_ACTIVITIES = {
    "erase": "*.webp",
    "explore_monuments": "*.webp",
    "explore_world_animals": "*.webp",
    "explore_farm_animals": "*.webp",
    "explore_world_music": "*.webp",
    "clickgame": "sea[1-6].webp",
}
GCOMPRIS_RCC_DIR = "usr/share/gcompris-qt/rcc"
LIBREOFFICE_TEMPLATES = {
    "Freshes": ("10000000000002C5*", "100000000000030F*", "1000000000000B8B*"),
    "Candy": ("1000000000000780*",),  # the two candy photos; the other two pictures are drawings
    "Growing_Liberty": ("*",),
}
LIBREOFFICE_TEMPLATE_DIR = "usr/lib/libreoffice/share/template/common/presnt"
SCIPY_FACE = "usr/lib/python3/dist-packages/scipy/misc/face.dat"
KPHOTOALBUM_INDEX = "usr/share/kphotoalbum/demo/index.xml"

# Natural color photos bundled with scikit-image (no download needed), with the license from their docstrings.
SKIMAGE_PHOTOS = {
    "astronaut": "public domain (NASA)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
    "stereo_motorcycle": "Middlebury 2014 stereo benchmark (left view)",
}


@dataclass
class Candidate:
    """One image to convert: how to open it and where it comes from."""

    source: str
    package: str
    name: str
    original_path: str
    license: str
    path: Path | None = None
    image: Image.Image | None = None
    kind: str = "photo"
    rotation: int = 0  # clockwise degrees to apply after decoding (kphotoalbum's index.xml `angle`)

    def open(self) -> Image.Image:
        image = self.image if self.image is not None else Image.open(self.path)
        if self.rotation:
            image = ImageOps.exif_transpose(image).rotate(-self.rotation, expand=True)
        return image


def skimage_candidates() -> list[Candidate]:
    """Natural color photos from `skimage.data`, or none (with a message) if scikit-image is missing."""
    try:
        from skimage import data
    except ImportError:
        print("scikit-image is not installed (pip install scikit-image); skipping its sample photos.")
        return []
    candidates = []
    for name, license_text in SKIMAGE_PHOTOS.items():
        try:
            array = getattr(data, name)()
        except Exception as error:  # noqa: BLE001 - optional data may need a download; report and go on.
            print(f"skimage.data.{name}: unavailable ({error}); skipping.")
            continue
        array = array[0] if isinstance(array, tuple) else array
        candidates.append(
            Candidate(
                "skimage", "scikit-image", name, f"skimage.data.{name}", license_text, image=Image.fromarray(array)
            )
        )
    return candidates


def wallpaper_candidates(roots: dict[Path, str | None]) -> list[Candidate]:
    """Raster wallpapers under `roots` (a filesystem root -> its package, or None to ask dpkg)."""
    files: list[tuple[Path, Path, Path, str | None]] = []
    for root, package in roots.items():
        for folder in map(root.joinpath, WALLPAPER_DIRS):
            if folder.is_dir():
                # Symlinks are skipped: packages use them for aliases of files that are listed anyway.
                paths = [path for path in sorted(folder.rglob("*")) if path.is_file() and not path.is_symlink()]
                files += [(root, folder, path, package) for path in paths]
    owners = _dpkg_owners([path for _, _, path, package in files if package is None])
    candidates = []
    for root, folder, path, package in files:
        if path.suffix.lower() not in RASTER_EXTENSIONS or _is_kde_variant(path):
            continue
        package = package or owners.get(str(path), "unknown")
        name = re.sub(r"[^A-Za-z0-9.-]+", "_", path.relative_to(folder).with_suffix("").as_posix())
        original = "/" + path.relative_to(root).as_posix()
        license_text = f"see licenses/{package}.copyright"
        kind = "photo" if f"{package}/{name}" in WALLPAPER_PHOTOS else "wallpaper"
        candidates.append(Candidate("debian", package, name, original, license_text, path=path, kind=kind))
    return candidates


class ResourceFileError(ValueError):
    """A file that is not the Qt resource (`.rcc`) file it should be."""


def read_rcc(path: Path) -> dict[str, bytes]:
    """The files inside a Qt binary resource file (`rcc` format versions 1-3), as {relative path: bytes}.

    Layout (big-endian): magic `qres`, version, then offsets of the tree, data and names sections. Tree nodes are
    14 bytes (version 1) or 22 (version >= 2, with a modification time): name offset (u32), flags (u16; 2 =
    directory, 1 = zlib-compressed), then either child count and first child index (directories) or country,
    language (u16 each) and data offset (u32). A name is a u16 length, a u32 hash and UTF-16-BE characters; data
    is a u32 length and the bytes, which for compressed entries start with qCompress' 4-byte length.
    """
    blob = Path(path).read_bytes()
    if len(blob) < 20 or blob[:4] != b"qres":
        raise ResourceFileError(f"{str(path)!r} is not a Qt resource file (no 'qres' header).")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    if version not in (1, 2, 3):
        raise ResourceFileError(f"{str(path)!r} has rcc format version {version}; versions 1-3 are supported.")
    node_size = 22 if version >= 2 else 14
    files: dict[str, bytes] = {}

    def name(offset: int) -> str:
        offset += names
        (length,) = struct.unpack(">H", blob[offset : offset + 2])
        return blob[offset + 6 : offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> None:
        offset = tree + index * node_size
        if offset + 14 > len(blob):
            raise ResourceFileError(f"{str(path)!r} is truncated (tree node {index} lies past its end).")
        name_offset, flags = struct.unpack(">IH", blob[offset : offset + 6])
        node_name = name(name_offset) if index else ""
        relative = f"{prefix}/{node_name}" if prefix else node_name
        if flags & 2:
            count, first = struct.unpack(">II", blob[offset + 6 : offset + 14])
            for child in range(count):
                walk(first + child, relative)
            return
        start = data + struct.unpack(">I", blob[offset + 10 : offset + 14])[0]
        (size,) = struct.unpack(">I", blob[start : start + 4])
        raw = blob[start + 4 : start + 4 + size]
        files[relative] = zlib.decompress(raw[4:]) if flags & 1 else raw

    walk(0, "")
    return files


def gcompris_licenses(readme: str) -> dict[str, dict[str, str]]:
    """Parses a GCompris resource README (blank-line separated `Copyright:`/`License:`/`Source:`/`Files:` blocks,
    file names on the `Files:` line or the lines after it) into {file name: {"author", "license", "source"}}."""
    entries: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", readme):
        fields: dict[str, str] = {}
        files: list[str] = []
        in_files = False
        for line in block.splitlines():
            key, colon, value = line.partition(":")
            if colon and key.strip() in ("Copyright", "License", "Source", "Comments", "Files"):
                in_files = key.strip() == "Files"
                if in_files:
                    files += value.split()
                else:
                    fields[key.strip().lower()] = value.strip()
            elif in_files:
                files += line.split()
        for file in files:
            entries[Path(file).name] = {
                "author": fields.get("copyright", "unknown"),
                "license": fields.get("license", "unknown"),
                "source": fields.get("source", ""),
            }
    return entries


def gcompris_candidates(root: Path, scratch: Path) -> list[Candidate]:
    """The photos of GCompris' photo activities, read out of their `.rcc` files, each with its own licence."""
    candidates = []
    for activity, pattern in GCOMPRIS_ACTIVITIES.items():
        rcc = root / GCOMPRIS_RCC_DIR / f"{activity}.rcc"
        if not rcc.is_file():
            continue
        files = read_rcc(rcc)
        licenses: dict[str, dict[str, str]] = {}
        for relative, content in files.items():
            if Path(relative).name == "README":
                licenses.update(gcompris_licenses(content.decode("utf-8", errors="replace")))
        for relative, content in sorted(files.items()):
            if not fnmatch.fnmatch(Path(relative).name, pattern):
                continue
            target = scratch / "gcompris" / activity / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            info = licenses.get(Path(relative).name, {"author": "unknown", "license": "see the package", "source": ""})
            license_text = f"{info['license']} ({info['author']}{', ' + info['source'] if info['source'] else ''})"
            name = f"{activity}_{Path(relative).stem}"
            original = f"/{GCOMPRIS_RCC_DIR}/{activity}.rcc:{relative}"
            candidates.append(Candidate("debian", "gcompris-qt-data", name, original, license_text, path=target))
    return candidates


def kphotoalbum_angles(index_xml: Path) -> dict[str, int]:
    """Clockwise display rotation of each demo photo, from the `angle` attributes of kphotoalbum's index.xml."""
    if not index_xml.is_file():
        return {}
    angles = {}
    for element in ElementTree.parse(index_xml).getroot().iter("image"):
        angle = int(element.get("angle", "0")) % 360
        if angle:
            angles[element.get("file", "")] = angle
    return angles


def listed_photo_candidates(root: Path, package: str) -> list[Candidate]:
    """The photos `PHOTO_SOURCES` lists for `package` under its extracted root."""
    patterns, license_text = PHOTO_SOURCES[package]
    angles = kphotoalbum_angles(root / KPHOTOALBUM_INDEX) if package == "kphotoalbum" else {}
    candidates = []
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_symlink() or not path.is_file():
                continue
            original = "/" + path.relative_to(root).as_posix()
            name = re.sub(r"[^A-Za-z0-9.-]+", "_", path.stem)
            rotation = angles.get(path.name, 0)
            candidates.append(
                Candidate("debian", package, name, original, license_text, path=path, rotation=rotation)
            )
    return candidates


def libreoffice_candidates(root: Path, scratch: Path) -> list[Candidate]:
    """Photos from the `Pictures/` folder of LibreOffice's zipped presentation templates (`.otp`)."""
    candidates = []
    for template, patterns in LIBREOFFICE_TEMPLATES.items():
        archive = root / LIBREOFFICE_TEMPLATE_DIR / f"{template}.otp"
        if not archive.is_file():
            continue
        with zipfile.ZipFile(archive) as bundle:
            for member in sorted(bundle.namelist()):
                name = Path(member).name
                if not member.startswith("Pictures/") or Path(name).suffix.lower() not in RASTER_EXTENSIONS:
                    continue
                if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
                    continue
                target = scratch / "libreoffice" / template / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(bundle.read(member))
                original = f"/{LIBREOFFICE_TEMPLATE_DIR}/{template}.otp:{member}"
                candidates.append(
                    Candidate("debian", "libreoffice-common", f"{template}_{Path(name).stem[-12:]}", original,
                              "MPL-2.0 (package)", path=target)
                )
    return candidates


def scipy_face_candidate(root: Path) -> list[Candidate]:
    """scipy's raccoon photo: `face.dat` is bz2-compressed raw RGB, 768 x 1024."""
    path = root / SCIPY_FACE
    if not path.is_file():
        return []
    pixels = np.frombuffer(bz2.decompress(path.read_bytes()), dtype=np.uint8)
    if pixels.size != 768 * 1024 * 3:
        raise ValueError(f"{str(path)!r} holds {pixels.size} bytes, not the 768 x 1024 x 3 of scipy's face.")
    image = Image.fromarray(pixels.reshape(768, 1024, 3))
    return [Candidate("debian", "python3-scipy", "face", "/" + SCIPY_FACE, "public domain", image=image)]


def wheel_candidates(wheel_dir: Path) -> list[Candidate]:
    """imgaug's quokka photo, read from its wheel (a zip) in `wheel_dir`."""
    candidates = []
    for wheel in sorted(wheel_dir.glob("imgaug-*.whl")):
        with zipfile.ZipFile(wheel) as bundle:
            if "imgaug/quokka.jpg" in bundle.namelist():
                with bundle.open("imgaug/quokka.jpg") as handle:
                    image = Image.open(handle)
                    image.load()
                candidates.append(
                    Candidate("pypi", "imgaug", "quokka", f"{wheel.name}:imgaug/quokka.jpg", "MIT (package)",
                              image=image)
                )
    return candidates


def photo_candidates(roots: dict[Path, str | None], scratch: Path, wheel_dir: Path | None) -> list[Candidate]:
    """Every real photograph of the surveyed packages found among the extracted roots (and the wheel folder)."""
    candidates = []
    for root, package in roots.items():
        if package in PHOTO_SOURCES:
            candidates += listed_photo_candidates(root, package)
        elif package == "gcompris-qt-data":
            candidates += gcompris_candidates(root, scratch)
        elif package == "libreoffice-common":
            candidates += libreoffice_candidates(root, scratch)
        elif package == "python3-scipy":
            candidates += scipy_face_candidate(root)
    if wheel_dir is not None:
        candidates += wheel_candidates(wheel_dir)
    return candidates


def _is_kde_variant(path: Path) -> bool:
    """KDE wallpaper packs ship a `screenshot` thumbnail and each image at several sizes; keep only the largest."""
    if path.parent.name == "contents" and path.stem == "screenshot":
        return True
    if path.parent.parent.name != "contents" or not path.parent.name.startswith("images"):
        return False

    def pixels(file: Path) -> int:
        with Image.open(file) as image:
            return image.width * image.height

    siblings = [
        file for file in path.parent.iterdir() if file.suffix.lower() in RASTER_EXTENSIONS and not file.is_symlink()
    ]
    return path != max(siblings, key=lambda file: (pixels(file), file.name))


def _dpkg_owners(paths: list[Path]) -> dict[str, str]:
    """Maps installed files to their Debian package with one `dpkg-query -S` call."""
    if not paths or shutil.which("dpkg-query") is None:
        return {}
    result = subprocess.run(["dpkg-query", "-S", *map(str, paths)], capture_output=True, text=True, check=False)
    owners = {}
    for line in result.stdout.splitlines():
        package, _, path = line.partition(": ")
        owners[path] = package.split(":")[0]
    return owners


def extract_debs(deb_dir: Path, into: Path) -> dict[Path, str]:
    """Extracts every `.deb` in `deb_dir` with `dpkg -x` (no installation); returns root -> package name."""
    roots = {}
    for deb in sorted(deb_dir.glob("*.deb")):
        package = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Package"], capture_output=True, text=True, check=True
        ).stdout.strip()
        root = into / package
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        roots[root] = package
    return roots


def convert(image: Image.Image, max_side: int, min_side: int) -> tuple[Image.Image | None, str]:
    """Returns the bounded RGB image, or None and the reason for skipping it."""
    if min(image.size) < min_side:
        return None, "small"
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return None, "grayscale"
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if (alpha < 255).mean() > 0.01:
            return None, "transparent"
    image.draft("RGB", (max_side, max_side))  # Fast JPEG downscaling while decoding; a no-op for other formats.
    image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.int16)
    if np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max() < 8:
        return None, "grayscale"
    if pixels.std(axis=(0, 1)).max() < 8:
        return None, "flat"
    return image, ""


def difference_hash(image: Image.Image) -> int:
    """64-bit gradient hash (dHash); resized copies of one image almost always share it."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def gather(candidates: list[Candidate], args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """Converts, deduplicates and saves the candidates; returns the records of saved and of skipped images."""
    records: list[dict] = []
    skipped: list[dict] = []
    seen_hashes: set[str] = set()
    seen_gradients: set[int] = set()
    written: set[Path] = set()
    for candidate in candidates:
        if any(fnmatch.fnmatch(candidate.original_path, pattern) for pattern in args.exclude):
            reason, image = "excluded", None
        else:
            try:
                with candidate.open() as original:
                    original_size = original.size
                    image, reason = convert(original, args.max_side, args.min_side)
            except (OSError, SyntaxError, ValueError) as error:
                print(f"{candidate.original_path}: unreadable ({error}); skipping.")
                image, reason = None, "unreadable"
        if image is not None:
            content_hash = hashlib.sha256(image.tobytes()).hexdigest()
            gradient_hash = difference_hash(image)
            if content_hash in seen_hashes or gradient_hash in seen_gradients:
                image, reason = None, "duplicate"
        if image is None:
            skipped.append({"original_path": candidate.original_path, "package": candidate.package, "reason": reason})
            continue
        seen_hashes.add(content_hash)
        seen_gradients.add(gradient_hash)

        target = args.output_dir / candidate.package / f"{candidate.name}.{args.format}"
        if target in written:
            target = target.with_stem(f"{candidate.name}-{content_hash[:8]}")
        written.add(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=95) if args.format == "jpg" else image.save(target)
        records.append(
            {
                "file": target.relative_to(args.output_dir).as_posix(),
                "source": candidate.source,
                "package": candidate.package,
                "original_path": candidate.original_path,
                "original_size": list(original_size),
                "size": list(image.size),
                "bytes": target.stat().st_size,
                "sha256": content_hash,
                "license": candidate.license,
                "kind": candidate.kind,
                **({"rotation": candidate.rotation} if candidate.rotation else {}),
            }
        )
    return records, skipped


def _copy_license(package: str, roots: dict[Path, str | None], licenses_dir: Path) -> None:
    for root in roots:
        copyright_file = root / "usr/share/doc" / package / "copyright"
        if copyright_file.is_file():
            licenses_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(copyright_file, licenses_dir / f"{package}.copyright")
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--extract-debs", type=Path, metavar="DIR", help="folder of .deb files to extract and use")
    parser.add_argument("--no-skimage", action="store_true", help="leave out scikit-image's sample photos")
    parser.add_argument("--max-side", type=int, default=1024, help="bound on the long side of saved images")
    parser.add_argument("--min-side", type=int, default=256, help="skip images with a shorter short side")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="GLOB", help="skip original paths matching")
    parser.add_argument("--pack", type=Path, metavar="DIR", help="also write the compact training pack to DIR")
    parser.add_argument("--pack-short-side", type=int, default=448, help="short side of the pack's images")
    parser.add_argument("--pack-quality", type=int, default=88, help="JPEG quality of the pack's images")
    parser.add_argument("--pack-kinds", nargs="+", default=["photo"], choices=("photo", "wallpaper"),
                        help="kinds of images the pack holds (wallpapers listed in WALLPAPER_PHOTOS count as photos)")
    args = parser.parse_args()

    args.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        roots: dict[Path, str | None] = {Path("/"): None}
        if args.extract_debs is not None:
            roots.update(extract_debs(args.extract_debs, Path(scratch)))
        candidates = ([] if args.no_skimage else skimage_candidates()) + wallpaper_candidates(roots)
        candidates += photo_candidates(roots, Path(scratch) / "unpacked", args.extract_debs)
        if not any(candidate.source == "debian" for candidate in candidates):
            print(
                "No wallpapers found. Install them (apt-get install " + " ".join(DEBIAN_PACKAGES) + ") or download "
                "them without installing (apt-get download " + " ".join(DEBIAN_PACKAGES) + ") and pass the folder "
                "with --extract-debs."
            )
        records, skipped = gather(candidates, args)
        for package in sorted({record["package"] for record in records} - {"scikit-image"}):
            _copy_license(package, roots, args.output_dir / "licenses")

    manifest = {"max_side": args.max_side, "min_side": args.min_side, "skipped": skipped, "images": records}
    (args.output_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for package in sorted({record["package"] for record in records}):
        chosen = [record for record in records if record["package"] == package]
        megabytes = sum(record["bytes"] for record in chosen) / 2**20
        print(f"{package:32s} {len(chosen):4d} images {megabytes:7.1f} MiB")
    total = sum(record["bytes"] for record in records) / 2**20
    reasons = sorted({entry["reason"] for entry in skipped})
    counts = ", ".join(f"{sum(entry['reason'] == reason for entry in skipped)} {reason}" for reason in reasons)
    print(f"{'total':32s} {len(records):4d} images {total:7.1f} MiB; skipped: {counts or 'none'}")
    print(f"{'real photographs':32s} {sum(record['kind'] == 'photo' for record in records):4d}")
    if args.pack is not None:
        packed = write_pack(records, args.output_dir, args.pack, args.pack_short_side, args.pack_quality,
                            set(args.pack_kinds))
        size = sum(path.stat().st_size for path in args.pack.rglob("*") if path.is_file()) / 2**20
        print(f"pack {args.pack}: {len(packed)} images, {size:.1f} MiB")
    return 0 if records else 1


def write_pack(
    records: list[dict], source_dir: Path, pack_dir: Path, short_side: int, quality: int, kinds: set[str]
) -> list[dict]:
    """Writes the training pack: the chosen images downscaled to `short_side` (never upscaled) as JPEG, under the
    same relative names (the validation split hashes them), with `manifest.json` and the licence files."""
    packed = []
    for record in records:
        if record["kind"] not in kinds:
            continue
        relative = Path(record["file"]).with_suffix(".jpg")
        target = pack_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source_dir / record["file"]) as image:
            image = image.convert("RGB")
            scale = short_side / min(image.size)
            if scale < 1:
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.LANCZOS)
            image.save(target, quality=quality)
            packed.append({**record, "file": relative.as_posix(), "size": list(image.size),
                           "bytes": target.stat().st_size})
    if (source_dir / "licenses").is_dir():
        shutil.copytree(source_dir / "licenses", pack_dir / "licenses", dirs_exist_ok=True)
    manifest = {"short_side": short_side, "quality": quality, "kinds": sorted(kinds), "images": packed}
    (pack_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return packed


if __name__ == "__main__":
    sys.exit(main())
