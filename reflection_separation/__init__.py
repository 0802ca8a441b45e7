"""Single-image reflection separation with joint latent diffusion, as a diffusers pipeline."""

from .attention import CrossLayerAttnProcessor, set_cross_layer_attention
from .composition import LatentCompositionGuidance, LatentCompositionNet
from .pipeline import ReflectionSeparationPipeline, ReflectionSeparationPipelineOutput
from .scheduling import DisjointSampling
from .vae import FGFMAutoencoderKL

__version__ = "0.1.0"

__all__ = [
    "CrossLayerAttnProcessor",
    "DisjointSampling",
    "FGFMAutoencoderKL",
    "LatentCompositionGuidance",
    "LatentCompositionNet",
    "ReflectionSeparationPipeline",
    "ReflectionSeparationPipelineOutput",
    "set_cross_layer_attention",
]
