"""FGFM-augmented ``AutoencoderKL``: Fidelity-Guided Feature Modulation of the decoder.

Disjoint sampling pushes the two layers apart and can shift colours; FGFM calibrates the decoder with
multi-scale features of the original mixture (paper, Sec. "Disjoint Sampling + FGFM"):

    y_dec' = y_dec + w * f([y_enc | y_dec])

``y_enc`` are the mixture's encoder features, taken at the output of the last resnet of each encoder
down block (before its downsampler); ``y_dec`` is the output of each decoder up block; the pair at the
same resolution is fused. ``f`` is a 1x1 convolution, SiLU and a zero-initialized 3x3 convolution, so an
untrained FGFM decodes exactly like the base VAE. ``w`` (``fgfm_strength``, 0.8 in the paper) is a call
argument of :meth:`FGFMAutoencoderKL.decode`. Without mixture features the decoder is the plain VAE.

This file imports only torch and diffusers, so it can be copied next to a saved pipeline.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput, DiagonalGaussianDistribution, Encoder
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' loader looks it up in this module)
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn


class FusionBlock(nn.Module):
    """``f([y_enc | y_dec])``: 1x1 conv, SiLU, zero-initialized 3x3 conv back to the decoder width."""

    def __init__(self, encoder_channels: int, decoder_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(encoder_channels + decoder_channels, hidden_channels, kernel_size=1)
        self.act = nn.SiLU()
        self.proj_out = nn.Conv2d(hidden_channels, decoder_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, encoder_features: torch.Tensor, decoder_features: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.act(self.proj_in(torch.cat([encoder_features, decoder_features], dim=1))))


class _Checkpointed:
    """Runs a block as diffusers' ``Encoder``/``Decoder`` do: through activation checkpointing when it is enabled
    and gradients are recorded."""

    def _checkpointed(self, block: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)


class FGFMEncoder(_Checkpointed, Encoder):
    """diffusers' VAE ``Encoder`` that can also return FGFM's features, the output of each down block's last resnet
    (before its downsampler). Written out rather than recorded by forward hooks: ``torch.compile`` does not guard on
    hooks, so an encoder compiled on a call without them would drop them on later calls (measured)."""

    def forward(
        self, sample: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if not return_features:
            return super().forward(sample)
        sample = self.conv_in(sample)
        features = []
        for block in self.down_blocks:
            for resnet in block.resnets:
                sample = self._checkpointed(resnet, sample, None)
            features.append(sample)
            for downsampler in block.downsamplers or ():
                sample = downsampler(sample)
        sample = self._checkpointed(self.mid_block, sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample))), features


class FGFMDecoder(_Checkpointed, Decoder):
    """diffusers' VAE ``Decoder`` that, given ``fusions`` and one encoder feature map per up block, adds
    ``strength * fusion(y_enc, y_dec)`` to each up block's output (FGFM), written out for the same reason as
    :class:`FGFMEncoder`. Without ``fusions`` it is the plain decoder."""

    def forward(
        self,
        sample: torch.Tensor,
        latent_embeds: torch.Tensor | None = None,
        fusions: nn.ModuleList | None = None,
        features: list[torch.Tensor] | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        if fusions is None:
            return super().forward(sample, latent_embeds)
        sample = self.conv_in(sample)
        sample = self._checkpointed(self.mid_block, sample, latent_embeds)
        for up_block, fusion, encoder_features in zip(self.up_blocks, fusions, features):
            sample = self._checkpointed(up_block, sample, latent_embeds)
            sample = sample + strength * fusion(encoder_features.to(sample.dtype), sample)
        sample = self.conv_norm_out(sample) if latent_embeds is None else self.conv_norm_out(sample, latent_embeds)
        return self.conv_out(self.conv_act(sample))


FGFM_PREFIX = "fgfm_fusions."  # state-dict keys of the FGFM fusion blocks; everything else is the base VAE


class FGFMAutoencoderKL(AutoencoderKL):
    """``AutoencoderKL`` whose decoder can be modulated by the mixture's encoder features (FGFM).

    Extra config: ``fgfm_reduction`` divides the decoder width to get the fusion blocks' hidden width.
    Use :meth:`encode_with_features` on the mixture and pass its features to :meth:`decode`.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float] | None = None,
        latents_std: tuple[float] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        fgfm_reduction: int = 2,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            latents_mean=latents_mean,
            latents_std=latents_std,
            force_upcast=force_upcast,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.encoder.__class__ = FGFMEncoder  # same modules and weights, plus the feature path
        self.decoder.__class__ = FGFMDecoder
        self.fgfm_fusions = nn.ModuleList()
        for up_index in range(len(block_out_channels)):
            decoder_channels = block_out_channels[len(block_out_channels) - 1 - up_index]
            encoder_channels = block_out_channels[self.fgfm_encoder_index(up_index)]
            hidden = max(decoder_channels // fgfm_reduction, 8)
            self.fgfm_fusions.append(FusionBlock(encoder_channels, decoder_channels, hidden))

    def fgfm_encoder_index(self, up_index: int) -> int:
        """Encoder down block whose features match the resolution of decoder up block ``up_index``.

        Down block ``i`` works at scale ``2^i`` before downsampling; up block ``j`` outputs scale
        ``2^(n-2-j)`` (the last one, which has no upsampler, stays at full resolution).
        """
        return max(len(self.config.block_out_channels) - 2 - up_index, 0)

    @classmethod
    def from_vae(cls, vae: AutoencoderKL, **fgfm_config) -> "FGFMAutoencoderKL":
        """Wrap a trained ``AutoencoderKL`` (e.g. Stable Diffusion's): same weights, fresh zero-initialized FGFM."""
        config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
        model = cls.from_config({**config, **fgfm_config})
        model.load_base_weights(vae.state_dict())
        return model.to(device=vae.device, dtype=vae.dtype)

    def load_base_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load an autoencoder's weights (a plain ``AutoencoderKL``'s or another FGFM one's) into everything but
        FGFM, which keeps its current weights; the two must have the same architecture."""
        base = {key: value for key, value in state_dict.items() if not key.startswith(FGFM_PREFIX)}
        own = self.state_dict()
        resized = [key for key, value in base.items() if key in own and own[key].shape != value.shape]
        if resized:
            raise ValueError(f"VAE weights do not match the FGFM model: other shapes for {resized}.")
        missing, unexpected = self.load_state_dict(base, strict=False)
        if unexpected or any(not key.startswith(FGFM_PREFIX) for key in missing):
            raise ValueError(f"VAE weights do not match the FGFM model: missing={missing}, unexpected={unexpected}.")

    @apply_forward_hook
    def encode_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode ``x`` (in [-1, 1]) to its posterior mode and the multi-scale features FGFM fuses.

        Returns the unscaled latent (multiply by ``scaling_factor`` for the UNet) and one feature map per
        encoder down block, finest first.
        """
        if self.use_tiling or self.use_slicing:
            raise ValueError("`encode_with_features` needs VAE tiling and slicing disabled.")
        moments, features = self.encoder(x, return_features=True)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussianDistribution(moments).mode(), features

    def _fused_decode(self, z: torch.Tensor, features: list[torch.Tensor], strength: float) -> torch.Tensor:
        """The decoder with FGFM: each up block fused with the encoder features at its resolution."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        matched = [features[self.fgfm_encoder_index(j)] for j in range(len(self.decoder.up_blocks))]
        return self.decoder(z, fusions=self.fgfm_fusions, features=matched, strength=strength)

    def _check_features(self, z: torch.Tensor, features: list[torch.Tensor]) -> None:
        if len(features) != len(self.encoder.down_blocks):
            raise ValueError(
                f"`mixture_features` must hold {len(self.encoder.down_blocks)} maps (from `encode_with_features`), "
                f"got {len(features)}."
            )
        if z.shape[0] % features[0].shape[0] != 0:
            raise ValueError(
                f"The latent batch ({z.shape[0]}) must be a multiple of the mixture batch ({features[0].shape[0]}): "
                "rows are [transmission; reflection] of the same mixtures."
            )
        scale = 2 ** (len(self.config.block_out_channels) - 1)
        expected = (z.shape[-2] * scale, z.shape[-1] * scale)
        if tuple(features[0].shape[-2:]) != expected:
            raise ValueError(
                f"`mixture_features` were computed at {tuple(features[0].shape[-2:])} but the latents decode to "
                f"{expected}; encode the mixture at the processing resolution."
            )
        if self.use_tiling:
            raise ValueError("FGFM decoding needs VAE tiling disabled (`vae.disable_tiling()`).")

    @apply_forward_hook
    def decode(
        self,
        z: torch.Tensor,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
        mixture_features: list[torch.Tensor] | None = None,
        fgfm_strength: float = 0.8,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Decode latents; with ``mixture_features`` the decoder is modulated by FGFM with weight ``fgfm_strength``.

        ``z`` may hold ``k`` rows per mixture (e.g. ``[T; R]``); the features are repeated to match.
        """
        if mixture_features is None or fgfm_strength == 0:
            return super().decode(z, return_dict=return_dict, generator=generator)
        self._check_features(z, mixture_features)
        repeats = z.shape[0] // mixture_features[0].shape[0]
        features = [f.repeat(repeats, 1, 1, 1) for f in mixture_features]
        if self.use_slicing and z.shape[0] > 1:
            slices = []
            for row in range(z.shape[0]):
                slices.append(self._fused_decode(z[row : row + 1], [f[row : row + 1] for f in features], fgfm_strength))
            decoded = torch.cat(slices)
        else:
            decoded = self._fused_decode(z, features, fgfm_strength)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)
