"""Cross-layer self-attention (CLSA) for the dual-branch UNet.

The paper (Sec. "Cross-Layer Self-Attention") lets the query of each layer attend to the keys and
values of both layers:

    H^i = softmax(Q^i [K^T; K^R]^T / sqrt(d)) [V^T; V^R],   i in {T, R}

Because both branches attend to the same joined keys, CLSA for one image is a single ordinary
attention over the joined token sequence: queries ``[Q^T; Q^R]`` (2N tokens) against keys
``[K^T; K^R]`` (2N tokens). This module implements it as one fused SDPA call per block, or, with attention
slicing (``pipe.enable_attention_slicing()``), as one SDPA call per slice of ``slice_size`` (image, head) rows,
diffusers' slicing convention: where SDPA materializes the scores (its math kernel, e.g. on CPU) the largest
score tensor shrinks from ``B * heads`` to ``slice_size`` rows of ``2N x 2N``.

Batch convention (used everywhere in this package): a UNet batch of ``2B`` rows holds the
transmission branch in rows ``[0, B)`` and the reflection branch in rows ``[B, 2B)``; row ``b`` of
the first half pairs with row ``b`` of the second half. Different images never attend to each other.

This file imports only torch and diffusers, so it can be copied next to a saved pipeline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, SlicedAttnProcessor


def join_layers(hidden_states: torch.Tensor) -> torch.Tensor:
    """``(2B, N, C)`` rows ``[T; R]`` -> ``(B, 2N, C)`` with each image's T tokens then R tokens."""
    rows, tokens, channels = hidden_states.shape
    if rows % 2 != 0:
        raise ValueError(
            f"Cross-layer self-attention needs a batch of paired rows [transmission; reflection], got an odd "
            f"batch of {rows} rows. Run the UNet through `ReflectionSeparationPipeline`, or switch the UNet to "
            "plain attention with `set_cross_layer_attention(unet, False)` for unpaired use."
        )
    pairs = rows // 2
    return hidden_states.reshape(2, pairs, tokens, channels).transpose(0, 1).reshape(pairs, 2 * tokens, channels)


def split_layers(hidden_states: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`join_layers`: ``(B, 2N, C)`` -> ``(2B, N, C)`` rows ``[T; R]``."""
    pairs, joined, channels = hidden_states.shape
    tokens = joined // 2
    return hidden_states.reshape(pairs, 2, tokens, channels).transpose(0, 1).reshape(2 * pairs, tokens, channels)


class CrossLayerAttnProcessor:
    """Self-attention processor implementing CLSA with one SDPA call over the joined token sequence.

    Install it on every ``attn1`` (self-attention) of a UNet with :func:`set_cross_layer_attention`.
    It refuses cross-attention (``encoder_hidden_states`` given), attention masks and odd batches,
    since each of these would make the pairing of the two layers ambiguous.
    Fused QKV projections (``unet.fuse_qkv_projections()``) are supported.

    Args:
        slice_size: attend ``slice_size`` (image, head) rows at a time, as diffusers' ``SlicedAttnProcessor``
            does; ``None`` runs all rows in one call. The result is the same up to float rounding.
    """

    def __init__(self, slice_size: int | None = None) -> None:
        if slice_size is not None and (not isinstance(slice_size, int) or slice_size < 1):
            raise ValueError(f"`slice_size` must be None or a positive integer, got {slice_size!r}.")
        self.slice_size = slice_size

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("`CrossLayerAttnProcessor` is a self-attention processor; install it on `attn1` only.")
        if attention_mask is not None:
            raise ValueError("`CrossLayerAttnProcessor` does not support attention masks.")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            rows, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(rows, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        rows, tokens, _ = hidden_states.shape
        joined = join_layers(hidden_states)
        pairs = joined.shape[0]

        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(joined).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(joined), attn.to_k(joined), attn.to_v(joined)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(pairs, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(pairs, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(pairs, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = self.attend(query, key, value, attn.scale)
        out = out.transpose(1, 2).reshape(pairs, 2 * tokens, attn.heads * head_dim).to(query.dtype)
        out = split_layers(out)

        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(rows, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        """SDPA over ``(pairs, heads, tokens, head_dim)``, in slices of ``slice_size`` (pair, head) rows if set."""
        if self.slice_size is None:
            return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False, scale=scale)
        shape = query.shape
        query, key, value = (t.flatten(0, 1)[None] for t in (query, key, value))  # 4D keeps SDPA's fused kernels
        rows = range(0, shape[0] * shape[1], self.slice_size)
        out = torch.cat([
            F.scaled_dot_product_attention(
                query[:, start : start + self.slice_size], key[:, start : start + self.slice_size],
                value[:, start : start + self.slice_size], dropout_p=0.0, is_causal=False, scale=scale,
            )
            for start in rows
        ], dim=1)
        return out.view(shape)


def set_cross_layer_attention(unet: torch.nn.Module, enabled: bool = True) -> None:
    """Install CLSA on every self-attention (``attn1``) of ``unet``, or plain attention when ``enabled=False``.

    Each self-attention keeps the slice size of its current processor (``None`` unless attention slicing is on):
    sliced CLSA, or diffusers' ``SlicedAttnProcessor`` when disabled. Cross-attention to the prompt (``attn2``)
    keeps its current processor, so it stays per branch.
    """
    processors = {}
    for name, processor in unet.attn_processors.items():
        if name.endswith("attn1.processor"):
            slice_size = getattr(processor, "slice_size", None)
            if enabled:
                processors[name] = CrossLayerAttnProcessor(slice_size)
            else:
                processors[name] = AttnProcessor2_0() if slice_size is None else SlicedAttnProcessor(slice_size)
        else:
            processors[name] = processor
    unet.set_attn_processor(processors)


def uses_cross_layer_attention(unet: torch.nn.Module) -> bool:
    """Whether every self-attention of ``unet`` runs CLSA."""
    self_attn = [p for name, p in unet.attn_processors.items() if name.endswith("attn1.processor")]
    return bool(self_attn) and all(isinstance(p, CrossLayerAttnProcessor) for p in self_attn)
