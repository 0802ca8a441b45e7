"""Disjoint sampling: mutually exclusive guidance between the two layers, for any diffusers scheduler.

The paper pushes the transmission and reflection trajectories apart with the noise difference as a
negative guidance (k = 0.2 in the paper):

    eps_T' = eps_T + k (eps_T - eps_R),     eps_R' = eps_R + k (eps_R - eps_T)

The combination is done in epsilon space whatever the model predicts. Each branch's output is turned
into epsilon with its own latent, combined, and turned back before the scheduler step. Conversions use
the variance-preserving latent ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` that the UNet sees, which is
``scheduler.scale_model_input(sample, t)`` for every diffusers scheduler (identity for DDIM/DDPM/DPM-Solver,
``sample / sqrt(sigma^2 + 1)`` for Euler-type schedulers). ``a_t`` comes from the scheduler's current
sigma where it has one (Euler, DPM-Solver, UniPC...), else from ``alphas_cumprod[t]`` (DDIM, DDPM...).

Rows are stacked ``[T; R]`` (see ``attention.py``). This file imports only torch, so it can be copied
next to a saved pipeline.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

MIN_SIGNAL = 0.05
"""Below this signal level ``sqrt(a_t)`` the latents hold (almost) no image, and epsilon-space rules would divide
by it: disjoint sampling and guidance skip such steps. Stable Diffusion's schedule never goes below 0.068, so
only the first step of a zero-terminal-SNR schedule (Lin et al., WACV 2024), where ``a_t = 0``, is skipped."""


def scheduler_alpha_prod(scheduler, timestep: torch.Tensor | int | float) -> torch.Tensor:
    """Cumulative alpha ``a_t`` of the VP process at ``timestep`` for ``scheduler``'s current step."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and hasattr(scheduler, "index_for_timestep"):
        index = scheduler.step_index
        if index is None:
            index = scheduler.index_for_timestep(timestep)
        sigma = sigmas[index].to(torch.float64)
        return 1.0 / (1.0 + sigma**2)
    alphas_cumprod = scheduler.alphas_cumprod
    return alphas_cumprod[int(timestep)].to(torch.float64)


def to_epsilon(
    model_output: torch.Tensor, model_input: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Turn a model output of ``prediction_type`` into the noise estimate, given the VP latent ``model_input``."""
    a = alpha_prod.sqrt().to(model_output.dtype)
    s = (1 - alpha_prod).sqrt().to(model_output.dtype)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return a * model_output + s * model_input
    if prediction_type == "sample":
        return (model_input - a * model_output) / s
    raise ValueError(f"Unsupported `prediction_type` {prediction_type!r}; expected one of {PREDICTION_TYPES}.")


def from_epsilon(
    epsilon: torch.Tensor, model_input: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Inverse of :func:`to_epsilon`."""
    a = alpha_prod.sqrt().to(epsilon.dtype)
    s = (1 - alpha_prod).sqrt().to(epsilon.dtype)
    if prediction_type == "epsilon":
        return epsilon
    if prediction_type == "v_prediction":
        return (epsilon - s * model_input) / a
    if prediction_type == "sample":
        return (model_input - s * epsilon) / a
    raise ValueError(f"Unsupported `prediction_type` {prediction_type!r}; expected one of {PREDICTION_TYPES}.")


def to_sample(
    model_output: torch.Tensor, model_input: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The clean-latent estimate a model output of ``prediction_type`` implies, computed directly so that v- and
    sample-prediction stay finite at ``a_t = 0`` (where going through epsilon would divide by zero)."""
    if prediction_type == "epsilon":
        return tweedie_x0(model_input, model_output, alpha_prod)
    if prediction_type == "v_prediction":
        a = alpha_prod.sqrt().to(model_output.dtype)
        s = (1 - alpha_prod).sqrt().to(model_output.dtype)
        return a * model_input - s * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"Unsupported `prediction_type` {prediction_type!r}; expected one of {PREDICTION_TYPES}.")


def tweedie_x0(model_input: torch.Tensor, epsilon: torch.Tensor, alpha_prod: torch.Tensor) -> torch.Tensor:
    """One-step estimate ``z_0|t = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t)``."""
    a = alpha_prod.sqrt().to(epsilon.dtype)
    s = (1 - alpha_prod).sqrt().to(epsilon.dtype)
    return (model_input - s * epsilon) / a


def disjoint_combine(epsilon: torch.Tensor, strength: float) -> torch.Tensor:
    """Apply ``eps_i' = eps_i + k (eps_i - eps_j)`` to stacked rows ``[T; R]``."""
    eps_t, eps_r = epsilon.chunk(2, dim=0)
    return torch.cat([eps_t + strength * (eps_t - eps_r), eps_r + strength * (eps_r - eps_t)], dim=0)


class DisjointSampling:
    """Disjoint sampling around any diffusers scheduler that steps on a model output.

    Call :meth:`epsilon` to get the combined noise estimate of both branches, and :meth:`model_output` to
    express a noise estimate in the scheduler's ``prediction_type`` at a (possibly updated) latent, then
    step the scheduler as usual. One scheduler instance steps the stacked ``[T; R]`` batch, so multistep
    solvers keep one history per row.
    """

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.get("prediction_type", "epsilon")

    def alpha_prod(self, timestep: torch.Tensor | int | float) -> torch.Tensor:
        return scheduler_alpha_prod(self.scheduler, timestep)

    def acts_at(self, timestep: torch.Tensor | int | float) -> bool:
        """Whether the step at ``timestep`` has enough signal for disjoint sampling and guidance (see MIN_SIGNAL)."""
        return bool(self.alpha_prod(timestep).sqrt() >= MIN_SIGNAL)

    def epsilon(
        self, model_output: torch.Tensor, timestep: torch.Tensor, model_input: torch.Tensor, strength: float
    ) -> torch.Tensor:
        """Combined noise estimate ``[eps_T'; eps_R']`` from the raw UNet output of both branches."""
        eps = to_epsilon(model_output, model_input, self.alpha_prod(timestep), self.prediction_type)
        return disjoint_combine(eps, strength) if strength != 0 else eps

    def model_output(self, epsilon: torch.Tensor, timestep: torch.Tensor, model_input: torch.Tensor) -> torch.Tensor:
        """Express ``epsilon`` in the scheduler's ``prediction_type`` at the VP latent ``model_input``."""
        return from_epsilon(epsilon, model_input, self.alpha_prod(timestep), self.prediction_type)
