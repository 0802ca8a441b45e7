"""Learned latent composition ``C`` and the test-time latent-composition guidance built on it.

Real mixtures are not ``I = T + R`` in pixel space, so the paper learns how two layers compose in
latent space: ``z_I_hat = C(z^T, z^R)``, trained with ``L_comp = ||C(E(T), E(R)) - E(I)||^2``. At test
time each sampling step estimates ``z_0|t`` of both branches with Tweedie's formula and moves the noisy
latents down the gradient of ``L_comp`` (paper, Sec. "Test-time Latent Synthesis Optimization"):

    z_t <- z_t - gamma_i ||z_t|| grad_{z_t} L_comp

The paper leaves ``gamma_i`` open. We choose ``gamma_i = scale * sqrt(1 - a_t) / ||grad||`` (``scale`` is the
pipeline's ``composition_guidance_scale``) per image and branch: every inner iteration moves a latent by
``scale * sqrt(1 - a_t)`` of its own norm along the steepest descent direction. That is independent of resolution
and of the scale of ``C``, strongest at noisy steps and vanishing at the end of sampling so the final latent is not
pushed off the data manifold. ``L_comp`` is the per-image mean squared error; images never share a gradient.

All latents here are scaled latents (``E(x) * scaling_factor``), the space the UNet works in.
This file imports only torch and diffusers, so it can be copied next to a saved pipeline.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

GUIDANCE_MODES = ("fast", "full")


class ResidualConvBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, twice, with a residual connection."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class LatentCompositionNet(ModelMixin, ConfigMixin):
    """``C([z^T, z^R]) -> z_I_hat``: a compact convolutional network from 2x to 1x latent channels.

    A 1x1 skip initialized to ``z^T + z^R`` (the additive prior) plus a residual conv stack whose last
    layer starts at zero, so at initialization ``C`` is the latent sum and training learns the rest.
    """

    @register_to_config
    def __init__(self, latent_channels: int = 4, hidden_channels: int = 64, num_blocks: int = 3, norm_groups: int = 8):
        super().__init__()
        self.skip = nn.Conv2d(2 * latent_channels, latent_channels, kernel_size=1)
        with torch.no_grad():
            eye = torch.eye(latent_channels)[:, :, None, None]
            self.skip.weight.copy_(torch.cat([eye, eye], dim=1))
            self.skip.bias.zero_()
        self.conv_in = nn.Conv2d(2 * latent_channels, hidden_channels, 3, padding=1)
        self.blocks = nn.Sequential(*[ResidualConvBlock(hidden_channels, norm_groups) for _ in range(num_blocks)])
        self.norm_out = nn.GroupNorm(norm_groups, hidden_channels)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(hidden_channels, latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, transmission_latent: torch.Tensor, reflection_latent: torch.Tensor) -> torch.Tensor:
        x = torch.cat([transmission_latent, reflection_latent], dim=1)
        h = self.blocks(self.conv_in(x))
        return self.skip(x) + self.conv_out(self.act(self.norm_out(h)))


def composition_loss(
    composition_net: LatentCompositionNet,
    transmission_latent: torch.Tensor,
    reflection_latent: torch.Tensor,
    mixture_latent: torch.Tensor,
) -> torch.Tensor:
    """Per-image ``L_comp``: mean squared error between ``C(z^T, z^R)`` and ``z^I``, shape ``(batch,)``."""
    residual = composition_net(transmission_latent, reflection_latent) - mixture_latent
    return residual.pow(2).flatten(1).mean(dim=1)


class LatentCompositionGuidance:
    """Test-time guidance that lowers ``L_comp`` by moving the noisy latents of both branches.

    ``mode="fast"`` detaches the noise estimate (gradient through Tweedie and ``C`` only, almost free);
    ``mode="full"`` differentiates through the UNet too (the paper's setting). The pipeline passes a
    ``predict_x0`` closure that maps the stacked latents ``[z_t^T; z_t^R]`` to ``[z_0|t^T; z_0|t^R]``
    and builds that closure according to the mode.
    """

    def __init__(self, composition_net: LatentCompositionNet, scale: float, steps: int = 1) -> None:
        self.composition_net = composition_net
        self.scale = scale
        self.steps = steps

    def loss(self, x0: torch.Tensor, mixture_latent: torch.Tensor) -> torch.Tensor:
        """Per-image ``L_comp`` of the stacked estimates ``[z_0^T; z_0^R]``."""
        transmission, reflection = x0.chunk(2, dim=0)
        return composition_loss(self.composition_net, transmission, reflection, mixture_latent)

    def __call__(
        self,
        latents: torch.Tensor,
        predict_x0: Callable[[torch.Tensor], torch.Tensor],
        mixture_latent: torch.Tensor,
        alpha_prod: torch.Tensor,
        first_x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``steps`` normalized gradient steps on the stacked latents; returns the updated latents.

        ``first_x0``: ``predict_x0(latents)`` already computed with its graph to ``latents`` (which then must
        require grad), used for the first step instead of calling ``predict_x0`` again.
        """
        if first_x0 is not None and not latents.requires_grad:
            raise ValueError("`first_x0` needs `latents` that require grad (its graph starts there).")
        step_size = self.scale * float((1 - alpha_prod).sqrt())
        for step in range(self.steps):
            reuse = step == 0 and first_x0 is not None
            latents = latents if reuse else latents.detach().requires_grad_(True)
            with torch.enable_grad():
                net_dtype = next(self.composition_net.parameters()).dtype
                x0 = (first_x0 if reuse else predict_x0(latents)).to(net_dtype)
                loss = self.loss(x0, mixture_latent.to(net_dtype)).sum()
                (grad,) = torch.autograd.grad(loss, latents)
            latents = latents.detach()
            dims = tuple(range(1, latents.ndim))
            latent_norm = torch.linalg.vector_norm(latents.float(), dim=dims, keepdim=True)
            grad_norm = torch.linalg.vector_norm(grad.float(), dim=dims, keepdim=True).clamp_min(1e-12)
            latents = latents - (step_size * latent_norm / grad_norm * grad.float()).to(latents.dtype)
        return latents
