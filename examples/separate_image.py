"""Separate one photo taken through glass into the scene behind it (transmission) and the reflection.

    python examples/separate_image.py photo.jpg out/ --model path/to/model_folder

writes ``out/photo_transmission.png`` and ``out/photo_reflection.png``, both in the photo's size.
``--model`` is a saved ``ReflectionSeparationPipeline`` folder or a Hugging Face Hub id.
"""

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageOps

import reflection_separation
from reflection_separation import ReflectionSeparationPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path, help="the photo to separate")
    parser.add_argument("out_dir", type=Path, help="folder for the two output layers")
    parser.add_argument("--model", default=reflection_separation.DEFAULT_MODEL, help="model folder or Hub id (default: the shipped small model)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (same seed, same result)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = ReflectionSeparationPipeline.from_pretrained(args.model).to(device)

    image = ImageOps.exif_transpose(Image.open(args.image))  # upright, as the camera meant it
    # Steps, processing resolution and guidance default to the values saved with the model.
    out = pipe(image, generator=torch.Generator().manual_seed(args.seed))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for layer, result in (("transmission", out.transmission[0]), ("reflection", out.reflection[0])):
        path = args.out_dir / f"{args.image.stem}_{layer}.png"
        result.save(path)
        print(f"{layer}: {path}")


if __name__ == "__main__":
    main()
