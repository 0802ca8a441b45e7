"""Separate every image in a folder, a few images per pipeline call.

    python examples/separate_folder.py photos/ out/ --model path/to/model_folder --batch-size 4

The pattern: pass the pipeline a list of images (they may differ in size) and one generator per image, so
each result depends only on its image and seed, never on --batch-size. Files that cannot be read are
reported and skipped; the others are still written.

This is a minimal sketch to copy from. For real batches use the command line tool, which adds globs,
recursive folders, resuming, atomic writes, a progress bar and more options:

    reflection-separation separate photos/ -o out/ --model path/to/model_folder --batch-size 4
"""

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image, ImageOps

import reflection_separation
from reflection_separation import ReflectionSeparationPipeline

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def open_image(path: Path) -> Image.Image | None:
    """The fully decoded, upright image, or None (with a message) if the file cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for broken or unknown files
        print(f"skipping {path}: {error}", file=sys.stderr)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("in_dir", type=Path, help="folder of photos")
    parser.add_argument("out_dir", type=Path, help="folder for <name>_transmission.png and <name>_reflection.png")
    parser.add_argument("--model", default=reflection_separation.DEFAULT_MODEL, help="model folder or Hub id (default: the shipped small model)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = ReflectionSeparationPipeline.from_pretrained(args.model).to(device)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    paths = sorted(p for p in args.in_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for start in range(0, len(paths), args.batch_size):
        loaded = [(path, open_image(path)) for path in paths[start : start + args.batch_size]]
        loaded = [(path, image) for path, image in loaded if image is not None]
        if not loaded:
            continue
        out = pipe(
            [image for _, image in loaded],
            generator=[torch.Generator().manual_seed(args.seed) for _ in loaded],  # one per image
            batch_size=len(loaded),
        )
        for (path, _), transmission, reflection in zip(loaded, out.transmission, out.reflection):
            transmission.save(args.out_dir / f"{path.stem}_transmission.png")
            reflection.save(args.out_dir / f"{path.stem}_reflection.png")
            print(f"separated {path} -> {args.out_dir}/{path.stem}_{{transmission,reflection}}.png")


if __name__ == "__main__":
    main()
