"""Train a tiny model from scratch through every stage, on CPU in under a minute, then use it.

    python examples/train_tiny.py runs/tiny                       # synthetic photos
    python examples/train_tiny.py runs/tiny --photos data/photos  # your photos (see examples/gather_photos.py)

This shows the whole training workflow at toy scale; the model learns next to nothing. The steps:

1. photos: the trainer composes (mixture, transmission, reflection) triplets from any ordinary photos;
2. a training config (written to ``<OUT_DIR>/config.json``; ``reflection-separation-train --config`` takes
   the same file) with the test suite's tiny model sizes and a few steps per stage;
3. the stages vae -> unet -> composition -> fgfm, each saving the complete pipeline to ``<OUT_DIR>/pipeline``;
4. load that pipeline and separate a held-out synthetic mixture into ``<OUT_DIR>/separated/``.

For a real model, start from ``examples/configs/small_model.json`` and ``examples/train_small_model.sh``.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.components import ModelSizeConfig
from reflection_separation.data import SyntheticReflectionDataset
from reflection_separation.training import TrainingConfig, train_stage

METHOD_STAGES = ("vae", "unet", "composition", "fgfm")  # in this order; each builds on the last


def make_photos(folder: Path, count: int = 16, size: int = 64) -> None:
    """Stand-in 'photos': a colored gradient with a few random shapes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        ramp = np.linspace(0, 1, size)[None, :, None] * rng.random(3) + rng.random(3) * 0.3
        image = Image.fromarray((np.clip(np.broadcast_to(ramp, (size, size, 3)), 0, 1) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rng.integers(0, size, 2)
            w, h = rng.integers(8, size // 2, 2)
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((int(x), int(y), int(x + w), int(y + h)), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        image.save(folder / f"photo_{i:02d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="run folder (config, logs, validation sheets, pipeline)")
    parser.add_argument("--photos", type=Path, default=None, help="folder of photos (default: make synthetic ones)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per stage")
    args = parser.parse_args()

    photos = args.photos
    if photos is None:
        photos = args.out_dir / "photos"
        make_photos(photos)

    stage = {
        "steps": args.steps,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "log_steps": 5,  # -> <OUT_DIR>/<stage>/log.jsonl
        "validation_steps": args.steps,  # -> <OUT_DIR>/<stage>/validation/step-*.png
        "checkpointing_steps": args.steps,  # -> <OUT_DIR>/<stage>/checkpoints/ (a rerun resumes from it)
    }
    model_sizes = ModelSizeConfig(pipeline={"default_denoising_steps": 4, "default_processing_resolution": 32})
    config = {
        "output_dir": str(args.out_dir),
        "photos": str(photos),
        "model": {"from_scratch": model_sizes.to_dict()},
        "resolution": 32,  # training crop size
        "num_samples": 1000,
        "validation_fraction": 0.25,  # share of photos held out (by a hash of their path)
        "validation_images": 2,
        "validation_inference_steps": 4,
        "stages": {name: stage for name in METHOD_STAGES},
    }
    config_path = args.out_dir / "config.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=2))

    training_config = TrainingConfig.from_file(config_path)
    for name in METHOD_STAGES:
        train_stage(training_config, name)  # saves the complete pipeline to <OUT_DIR>/pipeline
        print(f"stage {name} done: {training_config.pipeline_dir}")

    # Use the trained pipeline like any other.
    pipe = ReflectionSeparationPipeline.from_pretrained(training_config.pipeline_dir)
    held_out = SyntheticReflectionDataset(photos, resolution=32, split="validation", validation_fraction=0.25)
    mixture = held_out[0]["mixture"]  # a (3, H, W) tensor in [0, 1]; PIL images and arrays work too
    out = pipe(mixture, generator=torch.Generator().manual_seed(0))
    folder = args.out_dir / "separated"
    folder.mkdir(exist_ok=True)
    Image.fromarray((mixture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / "mixture.png")
    out.transmission[0].save(folder / "transmission.png")
    out.reflection[0].save(folder / "reflection.png")
    print(f"separated a held-out mixture: {folder}")


if __name__ == "__main__":
    main()
