"""Why a model's transmission is poor: one-step estimates at several noise levels, against the full sampler.

On a synthetic mixture (scikit-image's coffee behind glass reflecting its astronaut, as in the tests), with the
evaluation harness's PSNR against the true transmission T:

- the mixture itself, and the VAE's reconstruction of T (the ceiling the latent space allows);
- the UNet's one-step estimate of T from the true layers noised to t = 500, from the true layers noised to the
  last timestep (which, on Stable Diffusion's schedule, still holds sqrt(a_T) = 0.068 of the signal), and from
  pure noise at the last timestep (what sampling starts from);
- the full pipeline with the model's defaults.

A large gap between the last two one-step rows means the model learned to read the signal the schedule leaves
at t = T (Lin et al., WACV 2024), which sampling from pure noise does not have. On a zero-terminal-SNR schedule
(the shipped model's since its retraining) the two rows coincide.

    python benchmarks/diagnose_shipped_model.py --output benchmarks/results/diagnosis_shipped_model.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage import data as skimage_data

import reflection_separation
from reflection_separation import ReflectionSeparationPipeline, evaluation
from reflection_separation.data import ReflectionSynthesizer, SynthesisParameters
from reflection_separation.scheduling import to_sample


def coffee_mixture(downsample: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mixture, transmission, reflection)`` as ``(3, H, W)`` tensors in [0, 1]: every ``downsample``-th pixel
    of both photos, cropped to their common size and at most 192x256 (the default gives exactly that)."""
    photos = [image[::downsample, ::downsample] for image in (skimage_data.coffee(), skimage_data.astronaut())]
    height = min(192, *(image.shape[0] for image in photos))
    width = min(256, *(image.shape[1] for image in photos))
    transmission, reflection = (
        torch.from_numpy(np.ascontiguousarray(image[:height, :width])).permute(2, 0, 1).float() / 255
        for image in photos
    )
    parameters = SynthesisParameters(sigma=2.0, attenuation=0.8, ghost_offset=None, ghost_attenuation=0.0,
                                     overflow_factor=1.1)
    return ReflectionSynthesizer().apply(transmission, reflection, parameters)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return evaluation.psnr(prediction.permute(1, 2, 0).float().numpy(), target.permute(1, 2, 0).float().numpy())


@torch.no_grad()
def diagnose(pipe: ReflectionSeparationPipeline, seed: int, downsample: int = 2) -> dict[str, Any]:
    mixture, transmission, reflection = coffee_mixture(downsample)
    decode = lambda z: (pipe.decode_latents(z, None, 0.0).clamp(-1, 1) + 1) / 2  # noqa: E731  (no FGFM)
    encode = lambda x: pipe.encode_mixture(x[None] * 2 - 1)[0]  # noqa: E731
    z_mixture, clean = encode(mixture), torch.cat([encode(transmission), encode(reflection)])
    prompts = pipe.layer_prompt_batch(pipe.encode_layer_prompts(pipe.device).to(pipe.unet.dtype), 1)
    alphas = pipe.scheduler.alphas_cumprod
    last = len(alphas) - 1
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=generator)

    def one_step(t: int, signal: float) -> float:
        a = alphas[t].to(clean.dtype)
        noisy = signal * a.sqrt() * clean + (1 - a).sqrt() * noise
        output = pipe.predict_noise(noisy, torch.tensor(t), z_mixture, prompts)
        x0 = to_sample(output, noisy, a, pipe.scheduler.config.prediction_type)
        return psnr(decode(x0[:1])[0], transmission)

    out = pipe(mixture, generator=torch.Generator().manual_seed(seed), output_type="pt")
    return {
        "psnr_t": {
            "mixture": psnr(mixture, transmission),
            "vae_reconstruction": psnr(decode(clean[:1])[0], transmission),
            "one_step_true_layers_t500": one_step(500, 1.0),
            f"one_step_true_layers_t{last}": one_step(last, 1.0),
            f"one_step_pure_noise_t{last}": one_step(last, 0.0),
            "pipeline_defaults": psnr(out.transmission[0], transmission),
        },
        "signal_left_at_last_timestep": float(alphas[last].sqrt()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=reflection_separation.DEFAULT_MODEL, help="model folder or Hub id")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--downsample", type=int, default=2, help="photo subsampling (2: a 192x256 mixture)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    pipe = ReflectionSeparationPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    shown = "reflection_separation.DEFAULT_MODEL" if args.model == reflection_separation.DEFAULT_MODEL else str(args.model)
    report = {"model": shown, "seed": args.seed, "downsample": args.downsample, "torch": torch.__version__,
              **diagnose(pipe, args.seed, args.downsample)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["psnr_t"], indent=2))
    return report


if __name__ == "__main__":
    main()
