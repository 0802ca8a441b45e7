"""Build the pipeline's components from a size configuration, without any download.

Used for models trained from scratch (our shipped default model), for the test suite's tiny models,
and for benchmarks of the Stable Diffusion 2.1 architecture with random weights. The tokenizer is a
byte-level CLIP tokenizer with no merges (one token per character), created offline: the method only
ever encodes its two fixed prompts, so a full BPE vocabulary would add nothing but size.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .attention import set_cross_layer_attention, uses_cross_layer_attention
from .composition import LatentCompositionNet
from .pipeline import ReflectionSeparationPipeline
from .vae import FGFMAutoencoderKL


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for bytes (GPT-2's ``bytes_to_unicode``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def make_clip_tokenizer(model_max_length: int = 16) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (514 tokens incl. specials), built offline."""
    alphabet = _byte_level_alphabet()
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "vocab.json"
        merges_file = Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=model_max_length)


@dataclass
class ModelSizeConfig:
    """Sizes of every component; the defaults are the test suite's tiny model."""

    vae_channels: tuple[int, ...] = (8, 16)
    vae_layers_per_block: int = 1
    vae_norm_groups: int = 4
    latent_channels: int = 4
    scaling_factor: float = 1.0
    fgfm_reduction: int = 2
    unet_channels: tuple[int, ...] = (16, 32)
    unet_layers_per_block: int = 1
    unet_attention_head_dim: int = 8  # channels per attention head (see `unet_head_counts`)
    unet_norm_groups: int = 4
    unet_down_blocks: tuple[str, ...] = ("CrossAttnDownBlock2D", "DownBlock2D")
    unet_up_blocks: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D")
    text_hidden_size: int = 16
    text_layers: int = 1
    text_heads: int = 2
    text_max_length: int = 16
    composition_hidden: int = 16
    composition_blocks: int = 1
    composition_norm_groups: int = 4
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    zero_terminal_snr: bool = False
    pipeline: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError(
                "`zero_terminal_snr` needs `prediction_type='v_prediction'`: at zero signal an epsilon model "
                "cannot say anything about the image."
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelSizeConfig":
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown model size keys {sorted(unknown)}; valid keys: {sorted(cls.__dataclass_fields__)}.")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_scheduler(
    prediction_type: str = "epsilon", num_train_timesteps: int = 1000, zero_terminal_snr: bool = False
) -> DDIMScheduler:
    """Stable Diffusion's noise schedule with DDIM sampling on trailing timesteps (good at few steps).

    ``zero_terminal_snr`` rescales it so the last timestep is pure noise (Lin et al., WACV 2024): otherwise a
    model learns to read the signal left at t = T, which sampling from pure noise does not have.
    """
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
        prediction_type=prediction_type,
        rescale_betas_zero_snr=zero_terminal_snr,
    )


def make_text_encoder(hidden_size: int, layers: int, heads: int, max_length: int) -> CLIPTextModel:
    """A randomly initialized CLIP text encoder matching :func:`make_clip_tokenizer`'s vocabulary."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=514,
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=max_length,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )


def unet_head_counts(config: ModelSizeConfig) -> tuple[int, ...]:
    """Attention heads per UNet block for ``unet_attention_head_dim`` channels per head.

    ``UNet2DConditionModel``'s ``attention_head_dim`` is, despite its name, the number of heads (a naming bug kept
    for Stable Diffusion's configs). Passing a head width there gives narrow heads (32 heads of 3 channels at 96
    channels) that the fused attention kernels pad to 32 channels each: ~10x the attention work.
    """
    counts = []
    last = len(config.unet_channels) - 1
    for index, (channels, block) in enumerate(zip(config.unet_channels, config.unet_down_blocks)):
        if "CrossAttn" not in block and index != last:  # the mid block (attention) takes the last block's count
            counts.append(1)  # no attention at this width; diffusers still wants a number
        elif channels % config.unet_attention_head_dim:
            raise ValueError(f"`unet_attention_head_dim` {config.unet_attention_head_dim} does not divide the "
                             f"{channels} channels of an attention block; choose a divisor of their widths.")
        else:
            counts.append(channels // config.unet_attention_head_dim)
    return tuple(counts)


def deepen_unet(unet: UNet2DConditionModel, transformer_layers: int) -> UNet2DConditionModel:
    """A copy of ``unet`` with ``transformer_layers`` transformer layers in each of its attention blocks, computing
    the same function as ``unet``.

    The existing layers keep their weights; each new layer starts as the identity, because its self-attention,
    cross-attention and feed-forward output projections are zero and each adds its output to a residual stream. A
    trained UNet grown this way keeps what it learned while training gets the added capacity, which a model too
    large to train from scratch within one GPU budget could not otherwise get. CLSA is kept as ``unet`` has it.
    """
    current = unet.config.transformer_layers_per_block
    if not isinstance(current, int) or unet.config.reverse_transformer_layers_per_block is not None:
        raise ValueError("`deepen_unet` needs a UNet with one `transformer_layers_per_block` for all its blocks, got "
                         f"{current!r}.")
    if transformer_layers < current:
        raise ValueError(f"`transformer_layers` ({transformer_layers}) must be at least the UNet's {current}.")
    parameter = next(unet.parameters())
    grown = UNet2DConditionModel.from_config(unet.config, transformer_layers_per_block=transformer_layers)
    grown.to(device=parameter.device)
    if parameter.dtype != grown.dtype:
        grown.to(dtype=parameter.dtype)
    missing, unexpected = grown.load_state_dict(unet.state_dict(), strict=False)
    new_layers = {
        f"{name}.transformer_blocks.{index}": module.transformer_blocks[index]
        for name, module in grown.named_modules() if isinstance(module, Transformer2DModel)
        for index in range(current, transformer_layers)
    }
    new_weights = {f"{prefix}.{name}" for prefix, block in new_layers.items() for name in block.state_dict()}
    if unexpected or set(missing) != new_weights:
        unmapped = sorted(set(unexpected) ^ set(missing) ^ new_weights)
        raise ValueError(f"`deepen_unet` could not map the UNet's weights: {unmapped}")
    for block in new_layers.values():
        outputs = [block.attn1.to_out[0], block.ff.net[2]]
        if block.attn2 is not None:
            outputs.append(block.attn2.to_out[0])
        for layer in outputs:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
    set_cross_layer_attention(grown, uses_cross_layer_attention(unet))
    return grown


def build_pipeline(config: ModelSizeConfig | None = None, seed: int = 0) -> ReflectionSeparationPipeline:
    """A randomly initialized pipeline of the given sizes (deterministic for a seed)."""
    config = config or ModelSizeConfig()
    torch.manual_seed(seed)
    vae = FGFMAutoencoderKL(
        block_out_channels=config.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_groups,
        scaling_factor=config.scaling_factor,
        fgfm_reduction=config.fgfm_reduction,
    )
    unet = UNet2DConditionModel(
        in_channels=2 * config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers_per_block,
        down_block_types=config.unet_down_blocks,
        up_block_types=config.unet_up_blocks,
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=unet_head_counts(config),
        norm_num_groups=config.unet_norm_groups,
        sample_size=32,
    )
    text_encoder = make_text_encoder(
        config.text_hidden_size, config.text_layers, config.text_heads, config.text_max_length
    )
    composition_net = LatentCompositionNet(
        latent_channels=config.latent_channels,
        hidden_channels=config.composition_hidden,
        num_blocks=config.composition_blocks,
        norm_groups=config.composition_norm_groups,
    )
    scheduler = make_scheduler(config.prediction_type, config.num_train_timesteps, config.zero_terminal_snr)
    return ReflectionSeparationPipeline(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=make_clip_tokenizer(config.text_max_length),
        scheduler=scheduler,
        composition_net=composition_net,
        **config.pipeline,
    )
