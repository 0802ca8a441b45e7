"""Web demo: separate a photo taken through glass into transmission and reflection, in the browser.

    pip install -e ".[demo]"
    python examples/gradio_app.py                          # the shipped default model
    python examples/gradio_app.py --model path/to/model_folder --device cuda
    python examples/gradio_app.py --model path/to/model_folder --host 0.0.0.0 --port 7860

The server listens on 127.0.0.1 unless ``--host`` says otherwise, makes no share link unless ``--share``,
and sends no usage analytics (``GRADIO_ANALYTICS_ENABLED=False`` unless you set it yourself). The pipeline
is loaded once and runs one request at a time; other requests wait in Gradio's queue.

``build_demo(pipe)`` builds the interface around any loaded ``ReflectionSeparationPipeline`` (the tests use a
tiny one); its endpoint ``/separate`` takes ``(image, steps, disjoint_strength, fgfm_strength, composition_guidance,
composition_guidance_scale, processing_resolution, seed, ensemble_size, one_step)`` (the last two optional: 1 and
off) and returns ``(transmission, reflection, before_after, info)``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:
    import reflection_separation  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    _ROOT = Path(__file__).resolve().parents[1]
    if (_ROOT / "reflection_separation" / "__init__.py").is_file():
        sys.path.insert(0, str(_ROOT))

import numpy as np
import torch
from PIL import Image, ImageDraw

try:
    import gradio as gr
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "The web demo needs Gradio: pip install 'reflection-separation[demo]' (or pip install gradio)."
    ) from exc

GUIDANCE_CHOICES = ("off", "fast", "full")
HAS_IMAGE_SLIDER = hasattr(gr, "ImageSlider")

DESCRIPTION = """\
# Reflection separation
Upload a photo taken **through glass** (a shop window, a framed picture, a car or train window). The model
returns the scene behind the glass (**transmission**) and the **reflection** on it, both at the photo's size.
Implements *Reflection Separation from a Single Image via Joint Latent Diffusion* (CVPR 2026).
"""

EXAMPLES_NOTE = (
    "Examples: synthetic photos through glass, made on the fly like the training data (a photo plus a blurred, "
    "dimmed second photo as its reflection). Click one, then Separate."
)


# --------------------------------------------------------------------------------------------- examples


def _procedural_scene(height: int, width: int, seed: int) -> np.ndarray:
    """A colourful synthetic scene (sky gradient, hills, sun, boxes) as float32 ``HWC`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(0.3, 1.0, 3).astype(np.float32), rng.uniform(0.0, 0.7, 3).astype(np.float32)
    image = np.broadcast_to(top * (1 - y) + bottom * y, (height, width, 3)).copy()
    canvas = Image.fromarray((image * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    sun = rng.uniform([0.1, 0.05], [0.9, 0.4]) * (width, height)
    radius = min(height, width) * rng.uniform(0.06, 0.12)
    draw.ellipse([sun[0] - radius, sun[1] - radius, sun[0] + radius, sun[1] + radius], fill=(255, 236, 150))
    xs = np.arange(width)
    for layer in range(3):
        base = height * (0.55 + 0.12 * layer)
        phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 4.0)
        ridge = base + height * 0.06 * np.sin(xs / width * freq * np.pi + phase)
        colour = tuple(int(c) for c in rng.integers(20, 160, 3))
        draw.polygon([(0, height)] + list(zip(xs.tolist(), ridge.tolist())) + [(width - 1, height)], fill=colour)
    for _ in range(5):
        x0, y0 = rng.uniform(0, width * 0.85), rng.uniform(height * 0.35, height * 0.85)
        w, h = rng.uniform(width * 0.04, width * 0.15), rng.uniform(height * 0.08, height * 0.25)
        colour = tuple(int(c) for c in rng.integers(60, 255, 3))
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour, outline=(30, 30, 30), width=2)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _stripes_scene(height: int, width: int) -> np.ndarray:
    """A bright window frame with blinds, a typical indoor reflection, as float32 ``HWC`` in [0, 1]."""
    canvas = Image.new("RGB", (width, height), (40, 36, 32))
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = width * 0.2, height * 0.1, width * 0.75, height * 0.8
    draw.rectangle([left, top, right, bottom], fill=(250, 248, 235))
    for y in np.arange(top, bottom, height * 0.05):
        draw.rectangle([left, y, right, y + height * 0.018], fill=(150, 140, 120))
    draw.rectangle([(left + right) / 2 - 4, top, (left + right) / 2 + 4, bottom], fill=(60, 50, 40))
    draw.ellipse([width * 0.8, height * 0.55, width * 0.95, height * 0.95], fill=(200, 90, 60))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _skimage_photo(name: str, height: int, width: int) -> np.ndarray | None:
    """A photo bundled with scikit-image, centre-cropped and resized to ``(height, width)``; None if unavailable."""
    try:
        from skimage import data

        array = getattr(data, name)()
    except Exception:  # noqa: BLE001 - not installed, or a dataset that would need a download
        return None
    image = Image.fromarray(np.asarray(array)).convert("RGB")
    scale = max(width / image.width, height / image.height)
    image = image.resize((math.ceil(image.width * scale), math.ceil(image.height * scale)), Image.Resampling.LANCZOS)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    return np.asarray(image, dtype=np.float32) / 255.0


def _mix(transmission: np.ndarray, reflection: np.ndarray, sigma: float, attenuation: float) -> Image.Image:
    """``I = clip(T + R')`` with the training recipe (blur, attenuation, overflow compensation, no ghost)."""
    from reflection_separation.data import ReflectionSynthesizer, SynthesisParameters

    params = SynthesisParameters(
        sigma=sigma, attenuation=attenuation, ghost_offset=None, ghost_attenuation=0.0, overflow_factor=1.1
    )
    to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
    mixture, _, _ = ReflectionSynthesizer().apply(to_tensor(transmission), to_tensor(reflection), params)
    return Image.fromarray((mixture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def make_example_images(height: int = 320, width: int = 480) -> list[tuple[str, Image.Image]]:
    """Three small synthetic photos through glass, ``(caption, image)``, made in memory (nothing downloaded)."""
    pairs = [
        ("coffee behind glass, astronaut reflected", "coffee", "astronaut", 3.0, 0.7),
        ("rocket behind glass, cat reflected", "rocket", "chelsea", 2.0, 0.6),
    ]
    examples = []
    for caption, t_name, r_name, sigma, attenuation in pairs:
        transmission, reflection = _skimage_photo(t_name, height, width), _skimage_photo(r_name, height, width)
        if transmission is None or reflection is None:
            continue
        examples.append((caption, _mix(transmission, reflection, sigma, attenuation)))
    examples.append(
        (
            "drawn landscape behind glass, window with blinds reflected",
            _mix(_procedural_scene(height, width, seed=3), _stripes_scene(height, width)[:, ::-1], 2.5, 0.55),
        )
    )
    if len(examples) < 3:
        examples.append(
            (
                "drawn scene behind glass, another reflected",
                _mix(_procedural_scene(height, width, seed=7), _procedural_scene(height, width, seed=11), 4.0, 0.5),
            )
        )
    return examples


# -------------------------------------------------------------------------------------------- inference


def _side_by_side(before: Image.Image, after: Image.Image, gap: int = 8) -> Image.Image:
    """``before | after`` on one canvas: the comparison when this Gradio has no ImageSlider."""
    after = after.resize(before.size) if after.size != before.size else after
    canvas = Image.new("RGB", (before.width * 2 + gap, before.height), (255, 255, 255))
    canvas.paste(before.convert("RGB"), (0, 0))
    canvas.paste(after.convert("RGB"), (before.width + gap, 0))
    return canvas


def _friendly(message: str) -> str:
    """The pipeline names the input `image[0]`; in the demo it is simply the photo."""
    return message.replace("`image[0]`", "The photo").replace("`image`", "The photo")


def _user_error(message: str) -> gr.Error:
    """A ``gr.Error`` shown in the UI; no traceback in the server log where this Gradio allows it."""
    try:
        return gr.Error(message, print_exception=False)
    except TypeError:  # Gradio < 5.something has no print_exception
        return gr.Error(message)


def _default(value, fallback):
    return fallback if value is None else value


def make_separate_fn(pipe):
    """The Gradio handler: validates the UI values, runs ``pipe`` with a progress bar, maps errors to gr.Error."""
    lock = threading.Lock()  # one pipeline, one call at a time (the scheduler keeps per-call state)

    def separate(
        image,
        num_inference_steps,
        disjoint_strength,
        fgfm_strength,
        composition_guidance,
        composition_guidance_scale,
        processing_resolution,
        seed,
        ensemble_size=1,
        one_step=False,
        progress=gr.Progress(),  # noqa: B008 - the Gradio idiom for a progress tracker
    ):
        if image is None:
            raise _user_error("Upload a photo first (or click one of the examples).")
        for name, value in (
            ("Steps", num_inference_steps),
            ("Processing resolution", processing_resolution),
            ("Seed", seed),
            ("Ensemble size", ensemble_size),
        ):
            if value is None or not float(value).is_integer():
                raise _user_error(f"{name} must be a whole number, got {value!r}.")
        if composition_guidance not in GUIDANCE_CHOICES:
            raise _user_error(
                f"Guidance must be one of {', '.join(GUIDANCE_CHOICES)}, got {composition_guidance!r}."
            )
        steps, resolution, seed = int(num_inference_steps), int(processing_resolution), int(seed)
        steps = 1 if one_step else steps  # the one-step path ignores the slider (steps=1 takes that path too)
        ensemble_size = int(ensemble_size)
        if not 0 <= seed < 2**63:
            raise _user_error(f"Seed must be between 0 and 2^63 - 1, got {seed}.")

        def on_step(_pipe, step, _timestep, _kwargs):
            progress((step + 1, steps), desc="Denoising", unit="steps")
            return {}

        progress(0, desc="Waiting for the model" if lock.locked() else "Encoding")
        started = time.perf_counter()
        with lock:
            try:
                output = pipe(
                    image,
                    num_inference_steps=steps,
                    processing_resolution=resolution,
                    one_step=bool(one_step) or None,
                    disjoint_strength=float(disjoint_strength),
                    fgfm_strength=float(fgfm_strength),
                    composition_guidance=composition_guidance,
                    composition_guidance_scale=float(composition_guidance_scale),
                    generator=torch.Generator(device="cpu").manual_seed(seed),
                    ensemble_size=ensemble_size,
                    output_type="pil",
                    callback_on_step_end=on_step,
                )
            except (ValueError, TypeError) as exc:
                raise _user_error(_friendly(str(exc))) from exc
            except torch.cuda.OutOfMemoryError as exc:
                raise _user_error(
                    "Out of memory: lower the processing resolution or the number of steps, or use guidance "
                    "'fast' or 'off' instead of 'full'."
                ) from exc
        elapsed = time.perf_counter() - started
        transmission, reflection = output.transmission[0], output.reflection[0]
        before = image.convert("RGB")
        comparison = (before, transmission) if HAS_IMAGE_SLIDER else _side_by_side(before, transmission)
        info = (
            f"{image.width}x{image.height} px in {elapsed:.1f} s on {pipe.device} - "
            f"{'one step (one UNet call)' if steps == 1 else f'{steps} steps'}, "
            f"k={float(disjoint_strength):g}, w={float(fgfm_strength):g}, guidance {composition_guidance}"
            f" (scale {float(composition_guidance_scale):g}), processing resolution {resolution or 'native'}, seed {seed}"
            + (f", median of an ensemble of {ensemble_size}." if ensemble_size > 1 else ".")
        )
        return transmission, reflection, comparison, info

    return separate


# ----------------------------------------------------------------------------------------------- the UI


def build_demo(pipe, examples: Sequence[tuple[str, Image.Image]] | None = None) -> gr.Blocks:
    """The demo around a loaded ``ReflectionSeparationPipeline`` (queued, one inference at a time).

    ``examples``: ``(caption, image)`` pairs for the example gallery; ``None`` makes the built-in synthetic ones.
    """
    config = pipe.config
    default_steps = int(_default(config.get("default_denoising_steps"), 50))
    default_resolution = int(_default(config.get("default_processing_resolution"), 960))
    default_k = float(_default(config.get("default_disjoint_strength"), 0.2))
    default_w = float(_default(config.get("default_fgfm_strength"), 0.8))
    default_mode = _default(config.get("default_composition_guidance"), "fast")
    default_scale = float(_default(config.get("default_composition_guidance_scale"), 0.01))

    def guidance_for(one_step: bool) -> str:
        return "off" if one_step else default_mode

    multiple = int(getattr(getattr(pipe, "image_processor", None), "size_multiple", 64))
    resolution_step = math.gcd(multiple, default_resolution) if default_resolution else multiple
    min_size = int(_default(config.get("min_input_size"), 16))
    if examples is None:
        examples = make_example_images()

    with gr.Blocks(title="Reflection separation", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(DESCRIPTION)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                photo = gr.Image(
                    label="Photo through glass",
                    type="pil",
                    format="png",
                    image_mode="RGB",
                    sources=["upload", "clipboard"],
                    height=300,
                )
                if examples:
                    gr.Examples(
                        examples=[[image] for _, image in examples],
                        inputs=[photo],
                        label=EXAMPLES_NOTE,
                        cache_examples=False,
                    )
                run = gr.Button("Separate", variant="primary")
                steps = gr.Slider(
                    1, max(100, default_steps), value=default_steps, step=1, label="Denoising steps",
                    info="more steps: slower, usually cleaner",
                )
                one_step = gr.Checkbox(
                    value=bool(config.get("default_one_step")), label="One step",
                    info="one UNet call instead of the steps above: fast and deterministic; best with a model "
                    "fine-tuned for it (training stage `onestep`)",
                )
                disjoint = gr.Slider(
                    0.0, 1.0, value=default_k, step=0.05, label="Disjoint strength k",
                    info="pushes the two layers apart; 0 turns disjoint sampling off (paper: 0.2)",
                )
                fgfm = gr.Slider(
                    0.0, 2.0, value=default_w, step=0.05, label="FGFM strength w",
                    info="how much the decoder borrows detail from the photo; 0 = plain VAE decoder (paper: 0.8)",
                )
                guidance = gr.Radio(
                    list(GUIDANCE_CHOICES), value=guidance_for(one_step.value), label="Latent-composition guidance",
                    info="keeps T + R consistent with the photo; 'fast' differentiates through the Tweedie estimate, "
                    "'full' through the UNet too (several times slower); off in one step unless chosen",
                )
                # what the pipeline runs by default: one step without guidance, the sampling loop with the model's
                one_step.change(guidance_for, inputs=one_step, outputs=guidance, api_name=False)
                with gr.Accordion("More settings", open=False):
                    resolution = gr.Slider(
                        0, max(2048, default_resolution), value=default_resolution, step=resolution_step,
                        label="Processing resolution",
                        info=f"long side the photo is processed at (0 = native size, else at least {multiple}); "
                        "outputs always have the photo's size",
                    )
                    scale = gr.Slider(
                        0.0, max(0.1, default_scale), value=default_scale, step=0.001, label="Guidance scale",
                        info="relative step size of the guidance",
                    )
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", info="same seed, same result")
                    ensemble = gr.Slider(
                        1, 10, value=1, step=1, label="Ensemble size",
                        info="separations combined per pixel by their median: steadier layers, that many times the "
                        "time (1 = a single separation)",
                    )
            with gr.Column(scale=3, min_width=420):
                if HAS_IMAGE_SLIDER:
                    comparison = gr.ImageSlider(
                        label="Before / after: drag the handle to compare the photo with the transmission",
                        type="pil",
                        format="png",
                    )
                else:
                    comparison = gr.Image(
                        label="Before | after (photo, transmission)", type="pil", format="png", interactive=False
                    )
                with gr.Row():
                    transmission = gr.Image(
                        label="Transmission (scene behind the glass)", type="pil", format="png", interactive=False
                    )
                    reflection = gr.Image(
                        label="Reflection", type="pil", format="png", interactive=False
                    )
                info = gr.Markdown(
                    f"Outputs appear here. Photos must be at least {min_size} px on each side."
                )
        extra = {}
        if "show_progress_on" in inspect.signature(run.click).parameters:  # Gradio >= 5.x
            extra["show_progress_on"] = [comparison, transmission, reflection]
        run.click(
            make_separate_fn(pipe),
            inputs=[photo, steps, disjoint, fgfm, guidance, scale, resolution, seed, ensemble, one_step],
            outputs=[transmission, reflection, comparison, info],
            api_name="separate",
            concurrency_limit=1,
            **extra,
        )
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


# ---------------------------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    from reflection_separation.cli import DTYPE_CHOICES

    parser = argparse.ArgumentParser(
        prog="gradio_app.py",
        description="Web demo of reflection separation (transmission + reflection) with Gradio.",
    )
    parser.add_argument(
        "--model",
        metavar="FOLDER_OR_HUB_ID",
        help="saved ReflectionSeparationPipeline folder or Hugging Face Hub id (default: the shipped model)",
    )
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="weights dtype; auto (default): bfloat16 on a CPU with native bfloat16, else float32")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 = all)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from reflection_separation.cli import (
        UsageError,
        load_pipeline,
        resolve_device,
        resolve_dtype,
        resolve_model,
    )

    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"error: --port must be between 1 and 65535, got {args.port}.", file=sys.stderr)
        return 2
    try:
        model = resolve_model(args.model)
        device = resolve_device(args.device, args.dtype)
        print(f"loading {model} on {device} ...", file=sys.stderr)
        pipe = load_pipeline(model, device, resolve_dtype(args.dtype, device), quiet=True)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    demo = build_demo(pipe)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
