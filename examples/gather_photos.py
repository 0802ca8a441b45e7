"""Gather freely licensed photos into one folder for `SyntheticReflectionDataset`.

Sources:

* scikit-image's bundled sample photos (only natural color photos), if scikit-image is installed.
* Desktop wallpapers from Debian packages (mate-backgrounds, gnome-backgrounds, ukui-wallpapers,
  plasma-workspace-wallpapers), either installed (`/usr/share/backgrounds`, `/usr/share/wallpapers`) or
  extracted without installing from `.deb` files::

      mkdir -p /tmp/debs && cd /tmp/debs && apt-get download mate-backgrounds gnome-backgrounds \\
          ukui-wallpapers plasma-workspace-wallpapers
      python examples/gather_photos.py photos/ --extract-debs /tmp/debs

Every image is converted to RGB, downscaled to a bounded long side, and saved as JPEG (or PNG). SVGs,
grayscale, flat, transparent and small images are skipped, and exact and near duplicates (the same wallpaper at
several resolutions) are dropped. `manifest.json` records each file's source, original path, sizes, package and
license; the packages' copyright files are copied to `licenses/`. Many wallpapers are abstract graphics rather
than photos: review the output, or leave folders out with `--exclude`.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEBIAN_PACKAGES = ("mate-backgrounds", "gnome-backgrounds", "ukui-wallpapers", "plasma-workspace-wallpapers")
WALLPAPER_DIRS = ("usr/share/backgrounds", "usr/share/wallpapers")
RASTER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

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

    def open(self) -> Image.Image:
        if self.image is not None:
            return self.image
        return Image.open(self.path)


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
        candidates.append(Candidate("debian", package, name, original, license_text, path=path))
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
    args = parser.parse_args()

    args.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        roots: dict[Path, str | None] = {Path("/"): None}
        if args.extract_debs is not None:
            roots.update(extract_debs(args.extract_debs, Path(scratch)))
        candidates = ([] if args.no_skimage else skimage_candidates()) + wallpaper_candidates(roots)
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
    return 0 if records else 1


if __name__ == "__main__":
    sys.exit(main())
