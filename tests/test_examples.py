"""The example scripts in ``examples/``, each run as a user would: a subprocess on a tiny model saved to disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.components import build_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
LAYERS = ("transmission", "reflection")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    pipe = build_pipeline()
    pipe.register_to_config(default_denoising_steps=2, default_processing_resolution=32)
    folder = tmp_path_factory.mktemp("examples_model") / "tiny"
    pipe.save_pretrained(folder)
    return folder


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def run_example(script: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # the tiny model gains nothing from threads; keeps a 2-core machine responsive
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


def check_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit code {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def check_layers(folder: Path, stem: str, size: tuple[int, int]) -> list[np.ndarray]:
    arrays = []
    for layer in LAYERS:
        with Image.open(folder / f"{stem}_{layer}.png") as image:
            assert image.size == size, (layer, image.size, size)
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.int16))
    return arrays


def test_separate_image(tiny_model, tmp_path):
    photo = write_image(tmp_path / "photo.png", width=40, height=48)
    result = run_example("separate_image.py", photo, tmp_path / "out", "--model", tiny_model, "--seed", 3)
    check_ok(result)
    check_layers(tmp_path / "out", "photo", (40, 48))
    assert str(tmp_path / "out" / "photo_transmission.png") in result.stdout


def test_separate_image_uses_the_shipped_model_by_default(tmp_path):
    photo = write_image(tmp_path / "photo.png", width=40, height=48)
    result = run_example("separate_image.py", photo, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    check_layers(tmp_path / "out", "photo", (40, 48))


def test_separate_folder_skips_broken_files_and_ignores_batch_size(tiny_model, tmp_path):
    photos = tmp_path / "photos"
    write_image(photos / "a.png", 40, 48, seed=0)
    write_image(photos / "b.png", 40, 48, seed=1)  # same size as a.png: batched together with it
    (photos / "broken.png").write_bytes(b"not an image")
    write_image(photos / "c.jpg", 50, 30, seed=2)
    (photos / "notes.txt").write_text("not a photo")

    outputs = {}
    for batch_size in (1, 3):
        out_dir = tmp_path / f"out_{batch_size}"
        result = run_example("separate_folder.py", photos, out_dir, "--model", tiny_model, "--batch-size", batch_size)
        check_ok(result)
        assert "broken.png" in result.stderr
        assert sorted(p.name for p in out_dir.iterdir()) == sorted(
            f"{stem}_{layer}.png" for stem in ("a", "b", "c") for layer in LAYERS
        )
        outputs[batch_size] = [
            *check_layers(out_dir, "a", (40, 48)), *check_layers(out_dir, "b", (40, 48)), *check_layers(out_dir, "c", (50, 30))
        ]
    # One generator per image: a batch of two gives the single-image results (up to uint8 rounding).
    for single, batched in zip(outputs[1], outputs[3]):
        assert np.abs(single - batched).max() <= 1


def test_make_sheet_places_input_layers_and_truth(tmp_path):
    colours = {"in": (255, 0, 0), "t": (0, 255, 0), "r": (0, 0, 255), "tt": (255, 255, 0), "rt": (0, 255, 255)}
    for name, colour in colours.items():
        Image.new("RGB", (8, 6), colour).save(tmp_path / f"{name}.png")
    paths = [tmp_path / f"{name}.png" for name in colours]
    result = run_example("make_sheet.py", *paths[:3], "--truth", *paths[3:], "--scale", 2, "-o", tmp_path / "s.png")
    check_ok(result)
    with Image.open(tmp_path / "s.png") as sheet:
        assert sheet.size == (48, 24)
        centres = {"in": (8, 6), "t": (24, 6), "r": (40, 6), "tt": (24, 18), "rt": (40, 18)}
        for name, centre in centres.items():
            assert sheet.getpixel(centre) == colours[name], name
        assert sheet.getpixel((8, 18)) == (255, 255, 255)


def test_custom_scheduler(tiny_model, tmp_path):
    photo = write_image(tmp_path / "photo.png", width=44, height=36)
    result = run_example("custom_scheduler.py", photo, tmp_path / "out", "--model", tiny_model, "--steps", 3)
    check_ok(result)
    for name in ("ddim", "dpmsolver", "euler"):
        check_layers(tmp_path / "out" / name, "photo", (44, 36))
    assert "DPMSolverMultistepScheduler" in result.stdout and "EulerDiscreteScheduler" in result.stdout


def test_train_tiny(tmp_path):
    out_dir = tmp_path / "run"
    result = run_example("train_tiny.py", out_dir, timeout=180)
    check_ok(result)
    for stage in ("vae", "unet", "composition", "fgfm"):
        assert (out_dir / stage / "log.jsonl").is_file(), stage
    pipe = ReflectionSeparationPipeline.from_pretrained(out_dir / "pipeline")
    assert pipe.vae.config.scaling_factor != 1.0  # set by the vae stage
    for layer in LAYERS:
        with Image.open(out_dir / "separated" / f"{layer}.png") as image:
            assert image.size == (32, 32)
