"""Shared fixtures: tiny components built in code, no network."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reflection_separation.components import ModelSizeConfig, build_pipeline  # noqa: E402


@pytest.fixture
def tiny_pipe():
    pipe = build_pipeline(ModelSizeConfig(), seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_image(rng: np.random.Generator, height: int = 48, width: int = 40) -> np.ndarray:
    return rng.random((height, width, 3), dtype=np.float32)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


FAST = {"num_inference_steps": 3, "processing_resolution": 64, "output_type": "np"}
