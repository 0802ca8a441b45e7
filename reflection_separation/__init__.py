"""Single-image reflection separation with joint latent diffusion, as a diffusers pipeline."""

from pathlib import Path

from .attention import CrossLayerAttnProcessor, set_cross_layer_attention
from .composition import LatentCompositionGuidance, LatentCompositionNet
from .pipeline import ReflectionSeparationPipeline, ReflectionSeparationPipelineOutput
from .scheduling import DisjointSampling
from .vae import FGFMAutoencoderKL

__version__ = "0.1.0"

DEFAULT_MODEL = str(Path(__file__).parent / "default_model")
"""Folder of our small model, trained from scratch and shipped with the package (see ``model_card.md``):
``ReflectionSeparationPipeline.from_pretrained(reflection_separation.DEFAULT_MODEL)``."""

__all__ = [
    "DEFAULT_MODEL",
    "CrossLayerAttnProcessor",
    "DisjointSampling",
    "FGFMAutoencoderKL",
    "LatentCompositionGuidance",
    "LatentCompositionNet",
    "ReflectionSeparationPipeline",
    "ReflectionSeparationPipelineOutput",
    "set_cross_layer_attention",
]
