"""Image sheet for the README: the input and the separated layers on top, the true layers (if known) below.

    reflection-separation separate examples/images/coffee_through_glass.jpg -o out/ --seed 0
    python examples/make_sheet.py examples/images/coffee_through_glass.jpg out/coffee_through_glass_transmission.png \
        out/coffee_through_glass_reflection.png --truth examples/images/coffee_transmission_true.jpg \
        examples/images/coffee_reflection_true.jpg -o examples/images/coffee_shipped_model_sheet.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def make_sheet(top: list[Path], bottom: list[Path], scale: int = 1) -> Image.Image:
    """Rows of equally sized images (the first image's size, times ``scale``); the bottom row is left-aligned
    under the layers it shows (columns 2 and 3)."""
    first = Image.open(top[0])
    width, height = first.width * scale, first.height * scale
    sheet = Image.new("RGB", (3 * width, (2 if bottom else 1) * height), "white")
    for column, path in enumerate(top):
        sheet.paste(Image.open(path).convert("RGB").resize((width, height), Image.LANCZOS), (column * width, 0))
    for column, path in enumerate(bottom, start=1):
        sheet.paste(Image.open(path).convert("RGB").resize((width, height), Image.LANCZOS), (column * width, height))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path)
    parser.add_argument("transmission", type=Path)
    parser.add_argument("reflection", type=Path)
    parser.add_argument("--truth", type=Path, nargs=2, metavar=("T", "R"), default=[], help="the true layers")
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    make_sheet([args.input, args.transmission, args.reflection], list(args.truth), args.scale).save(
        args.output, quality=90
    )
    print(args.output)


if __name__ == "__main__":
    main()
