"""Shared fixtures: tiny components built in code, no network."""

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reflection_separation.components import ModelSizeConfig, build_pipeline  # noqa: E402


@pytest.fixture(autouse=True)
def float32_cli(monkeypatch):
    """The CLI's `--dtype auto` picks bfloat16 on CPUs with native bfloat16; the suite compares CLI outputs with
    float32 pipeline calls, so it runs as on a CPU without (the tests of `auto` patch this themselves)."""
    from reflection_separation import cli

    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda *args: False)


@pytest.fixture
def tiny_pipe():
    pipe = build_pipeline(ModelSizeConfig(), seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def single_thread():
    """The tiny model gains nothing from threads, and one thread keeps timings steady on a busy machine (two
    threads on two shared cores ran a tiny call 50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_image(rng: np.random.Generator, height: int = 48, width: int = 40) -> np.ndarray:
    return rng.random((height, width, 3), dtype=np.float32)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


FAST = {"num_inference_steps": 3, "processing_resolution": 64, "output_type": "np"}


ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str) -> ModuleType:
    """Import a script that is not part of the package (e.g. ``benchmarks/ablation.py``) as a module."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_photos(folder: Path, count: int = 30) -> Path:
    """``count`` small colour-ramp-plus-noise photos, enough for both sides of a 40 % validation split."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        ramp = np.linspace(0, 1, 48)[None, :, None] * rng.random(3)
        image = np.clip(ramp + rng.random((48, 48, 3)) * 0.3, 0, 1)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"photo_{i:02d}.png")
    return folder
