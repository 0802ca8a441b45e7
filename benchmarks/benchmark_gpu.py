"""Speed, memory and FLOPs of the reflection-separation pipeline on one GPU, against its compute floor (issue 11).

Models (side by side in one JSON):
  sd21_arch_random  the Stable Diffusion 2.1 architecture with random weights, built in code (no download):
                    UNet (8 input channels), FGFM VAE, a CLIP text encoder of width 1024 with few layers
                    (it runs once per call, for the two fixed prompts), LatentCompositionNet, DDIM (trailing)
  small_model       our shipped small model, with `--model FOLDER` (skipped when not given or missing)
In `--tiny` mode the first is the test suite's tiny model (`components.build_pipeline()`).

Per model, the sections (in this order; `--only` picks some, `--compile` adds the last four, which compile):
  unet_step      one dual-branch UNet step (2 rows [T; R], prompts (2, 77, 1024)) at each resolution with plain
                 self-attention and with CLSA (also channels-last, and with fused QKV projections), eager and
                 replayed from a CUDA graph
  sdpa_backends  the CLSA step under each SDPA backend (flash, cuDNN, memory-efficient)
  guidance_step  one sampling step at the largest resolution: no guidance, "fast", "full" with activation
                 checkpointing and "full" without (the pipeline's default), both with frozen UNet weights and the
                 step's forward reused for the first gradient: time, peak memory, ratio to the no-grad step
  vae_decode     decoding 2 latents at the largest resolution with FGFM features and plain
  profile        the largest CLSA step by kind of CUDA kernel (attention, convolution, linear, rest)
  pipeline       full calls (random image, 50 steps) at each resolution with guidance off / fast / full,
                 eager and with the pipeline's no-grad UNet calls replayed from CUDA graphs
  one_step       one-step calls (`num_inference_steps=1`: one UNet call on a zero start latent, then the FGFM
                 decode of both layers) at each resolution, eager and with the pipeline's CUDA graphs, and their
                 parts alone: the VAE encode of the mixture, the CLSA UNet call and the FGFM decode of 2 latents
  tiled          a 2048 x 2048 call with `tile_size=960`: time and peak memory
  offload        a "fast" call at the largest resolution resident on the GPU and with `enable_model_cpu_offload`
  compile        torch.compile of the UNet: first-call (warm-up) seconds per shape, the CLSA step compiled and
                 compiled in a CUDA graph, and a "fast" pipeline call at the largest resolution with it
  compile_after_call  a "fast" call at the largest resolution (pipeline defaults: CUDA graphs on CUDA) with the
                 UNet compiled before the pipeline's first call and after it (the graphs captured from the eager
                 UNet must be recaptured from the compiled one): both should take the same time
  one_step_compiled  the one-step call at each resolution with the UNet, the VAE encoder and the VAE decoder
                 compiled: first-call (warm-up) seconds, then the call with CUDA graphs off and on
  one_step_fast  the one-step call on a photo of the largest resolution with the UNet and VAE channels-last, eager
                 and compiled, processed at that side and at `--reduced-processing-resolution` (detail transferred)
With `--peers DIR`, a forward of RDNet and DSIT (random weights) runs first (`benchmarks/peers.py`).
Before everything the bf16 matmul rate (8192^3) is measured; every figure with a FLOP count (FlopCounterMode: matmuls,
convolutions and attention, not elementwise work) also gets `floor_ms = flops / matmul rate` and
`x_floor = median_ms / floor_ms`. Timings are CUDA-event medians after warm-ups; memory is
`torch.cuda.max_memory_allocated` from a reset before the warm-ups (weights included; `peak_above_start_gib`
excludes what was allocated before). The JSON is rewritten after every section, so a timeout keeps the results.

    # on an H200, in parts of < 10 min (the README lists the parts of the committed run), then one report
    python benchmarks/benchmark_gpu.py --models sd21_arch_random --only unet_step,guidance_step,tiled
    python benchmarks/benchmark_gpu.py --models small_model --model reflection_separation/default_model
    python benchmarks/benchmark_gpu.py --models sd21_arch_random --only compile      # ~3 min with a cold cache
    python benchmarks/benchmark_gpu.py --merge benchmarks/results/h200_benchmark.json RUN1.json RUN2.json ...
    # smoke run of every code path on CPU (CUDA-only parts are marked "skipped: needs CUDA")
    python benchmarks/benchmark_gpu.py --device cpu --tiny --compile --compile-backend eager
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch.autograd import DeviceType
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.attention import set_cross_layer_attention, uses_cross_layer_attention
from reflection_separation.components import build_pipeline, make_clip_tokenizer, make_scheduler, make_text_encoder
from reflection_separation.composition import LatentCompositionGuidance, LatentCompositionNet
from reflection_separation.cuda_graphs import CUDAGraphed
from reflection_separation.scheduling import DisjointSampling
from reflection_separation.tiling import tile_boxes
from reflection_separation.vae import FGFMAutoencoderKL

GIB = 1024**3
NEEDS_CUDA = {"skipped": "needs CUDA"}
# Per-model sections in run order; the compiling ones are last because they compile modules in place while they run.
SECTIONS = ("unet_step", "sdpa_backends", "guidance_step", "vae_decode", "profile", "pipeline", "one_step", "tiled",
            "offload", "compile", "compile_after_call", "one_step_compiled", "one_step_fast")
COMPILE_SECTIONS = ("compile", "compile_after_call", "one_step_compiled", "one_step_fast")
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in COMPILE_SECTIONS)
GUIDANCE_MODES = ("off", "fast", "full")
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
# Sizes of a real run and of the CPU smoke run (`--tiny`); command-line values override them.
PROFILES: dict[str, dict[str, Any]] = {
    "full": {"resolutions": [512, 960], "steps": 50, "repeats": 20, "warmup": 3, "pipeline_repeats": 2,
             "tiled_size": 2048, "tile_size": 960, "matmul_size": 8192, "dtype": "bf16", "profile_steps": 3,
             "reduced_processing_resolution": 768},
    "tiny": {"resolutions": [32, 48], "steps": 2, "repeats": 2, "warmup": 1, "pipeline_repeats": 1,
             "tiled_size": 96, "tile_size": 48, "matmul_size": 256, "dtype": "fp32", "profile_steps": 1,
             "reduced_processing_resolution": 32},
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def logged_ms(results: dict[str, Any], *path: str) -> str:
    """The ``median_ms`` at ``path`` for a log line; "-" where it was not measured (skipped or failed)."""
    value = lookup(results, *path, "median_ms")
    return "-" if value is None else f"{value:.2f} ms"


def describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def clear_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def attempt(measurement: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measurement()``, or ``{"error": ...}`` if it raises: one failure (e.g. out of memory) keeps the others."""
    try:
        return measurement()
    except Exception as error:
        traceback.print_exc()
        failure = {"error": describe(error)}
    clear_memory()  # after the except block, which kept the failed frames (and their tensors) alive
    return failure


# --------------------------------------------------------------------------------------------- measuring


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's FLOP counter knows the CUDA attention kernels but not the CPU one; count it the same way.
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and any backward it runs), by op."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


class Runtime:
    """Device, dtype, repeat counts and the measured matmul rate that sets every compute floor."""

    def __init__(self, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int) -> None:
        self.device = device
        self.dtype = dtype
        self.warmup = warmup
        self.repeats = repeats
        self.matmul_flops_per_s: float | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def time_ms(self, fn: Callable[[], Any]) -> float:
        """Wall time of one call: CUDA events on a GPU, ``perf_counter`` on CPU."""
        if self.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        start_s = time.perf_counter()
        fn()
        return (time.perf_counter() - start_s) * 1e3

    def versus_floor(self, milliseconds: float, flops: int) -> dict[str, float]:
        """The compute floor of ``flops`` at the measured matmul rate and how far ``milliseconds`` is above it."""
        if not self.matmul_flops_per_s or not flops:
            return {}
        floor_ms = flops / self.matmul_flops_per_s * 1e3
        return {
            "floor_ms": floor_ms,
            "x_floor": milliseconds / floor_ms,
            "achieved_tflops": flops / (milliseconds / 1e3) / 1e12,
        }

    def measure(
        self, fn: Callable[[], Any], flops: int | None = None, warmup: int | None = None, repeats: int | None = None
    ) -> dict[str, Any]:
        """Median and minimum time of ``repeats`` calls after ``warmup`` calls, peak memory over all of them."""
        warmup = self.warmup if warmup is None else warmup
        repeats = self.repeats if repeats is None else repeats
        clear_memory()
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            start_bytes = torch.cuda.memory_allocated(self.device)
        for _ in range(warmup):
            fn()
        times = [self.time_ms(fn) for _ in range(repeats)]
        result: dict[str, Any] = {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "warmup": warmup,
            "repeats": repeats,
            "peak_gib": None,
            "peak_above_start_gib": None,
        }
        if self.is_cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            result["peak_gib"] = peak / GIB
            result["peak_above_start_gib"] = (peak - start_bytes) / GIB
        if flops is not None:
            result["flops"] = flops
            result.update(self.versus_floor(result["median_ms"], flops))
        return result


def measure_matmul(runtime: Runtime, size: int) -> dict[str, Any]:
    """Rate of a square ``size^3`` matmul in the benchmark dtype: the rate every compute floor uses."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(runtime.device, runtime.dtype)
    b = torch.randn(size, size, generator=generator).to(runtime.device, runtime.dtype)
    flops = 2 * size**3
    result = runtime.measure(lambda: torch.mm(a, b), warmup=max(runtime.warmup, 3), repeats=max(runtime.repeats, 10))
    result.update({"size": size, "dtype": str(runtime.dtype), "flops": flops,
                   "tflops": flops / (result["median_ms"] / 1e3) / 1e12})
    return result


@contextlib.contextmanager
def attention_mode(unet: UNet2DConditionModel, clsa: bool) -> Iterator[None]:
    """CLSA (``True``) or plain self-attention on every ``attn1`` for the duration."""
    previous = uses_cross_layer_attention(unet)
    set_cross_layer_attention(unet, clsa)
    try:
        yield
    finally:
        set_cross_layer_attention(unet, previous)


@contextlib.contextmanager
def channels_last(enabled: bool, *modules: torch.nn.Module) -> Iterator[None]:
    """Convolution weights of ``modules`` in channels-last layout for the duration (when ``enabled``)."""
    if enabled:
        for module in modules:
            module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if enabled:
            for module in modules:
                module.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def fused_qkv(unet: UNet2DConditionModel, enabled: bool) -> Iterator[None]:
    """Fused projections for the duration (when ``enabled``), set up as the README tells users to:
    ``unet.fuse_qkv_projections()`` (one ``to_qkv`` matmul per self-attention, one ``to_kv`` per cross-attention,
    diffusers' fused processor everywhere), then CLSA reinstalled on the self-attention, reading ``to_qkv``.
    Afterwards the fused layers are removed (diffusers' unfuse keeps them) and the processors restored."""
    if not enabled:
        yield
        return
    processors = unet.attn_processors
    clsa = uses_cross_layer_attention(unet)
    unet.fuse_qkv_projections()
    if clsa:
        set_cross_layer_attention(unet)
    try:
        yield
    finally:
        for module in (module for module in unet.modules() if isinstance(module, Attention)):
            module.fused_projections = False
            for name in ("to_qkv", "to_kv"):
                if hasattr(module, name):
                    delattr(module, name)
        unet.set_attn_processor(processors)


# --------------------------------------------------------------------------------------------- models


def build_sd21_pipeline(text_layers: int, device: torch.device, dtype: torch.dtype) -> ReflectionSeparationPipeline:
    """The SD 2.1 architecture with random weights: the cost of the method at full size, without a download."""
    torch.manual_seed(0)
    with device:  # allocate and initialize the weights on the device directly (fast for the 866M-parameter UNet)
        unet = UNet2DConditionModel(
            in_channels=8,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),  # diffusers' name for SD 2.x's head counts: 64 channels per head
            use_linear_projection=True,
            sample_size=96,
        )
        vae = FGFMAutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=768,
            scaling_factor=0.18215,
        )
        text_encoder = make_text_encoder(1024, text_layers, 16, 77)  # gelu vs quick_gelu: same cost
        composition_net = LatentCompositionNet()
    scheduler = make_scheduler("v_prediction")  # SD 2.1 (768); the cost is the same for epsilon
    pipe = ReflectionSeparationPipeline(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=make_clip_tokenizer(77),
        scheduler=scheduler,
        composition_net=composition_net,
    )
    return pipe.to(device=device, dtype=dtype)


def describe_components(pipe: ReflectionSeparationPipeline, note: str) -> dict[str, Any]:
    def millions(module: torch.nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    return {
        "note": note,
        "parameters_millions": {
            name: millions(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder", "composition_net")
        },
        "unet_block_out_channels": list(pipe.unet.config.block_out_channels),
        "vae_block_out_channels": list(pipe.vae.config.block_out_channels),
        "text_encoder_layers": pipe.text_encoder.config.num_hidden_layers,
        "text_encoder_hidden_size": pipe.text_encoder.config.hidden_size,
        "prompt_tokens": pipe.tokenizer.model_max_length,
        "scheduler": f"{type(pipe.scheduler).__name__} ({pipe.scheduler.config.get('timestep_spacing')}, "
        f"{pipe.scheduler.config.get('prediction_type')})",
        "dtype": str(pipe.unet.dtype),
        "unet_weights_require_grad": any(p.requires_grad for p in pipe.unet.parameters()),
        "pipeline_defaults": {k: v for k, v in pipe.config.items() if k.startswith("default_")},
    }


class ModelBench:
    """One pipeline under test, with the inputs and FLOP counts its sections share."""

    def __init__(self, pipe: ReflectionSeparationPipeline, runtime: Runtime, args: argparse.Namespace) -> None:
        self.pipe = pipe
        self.unet = pipe.unet
        self.runtime = runtime
        self.args = args
        self.prompts = pipe.encode_layer_prompts(runtime.device).to(pipe.unet.dtype)  # (2, tokens, width)
        self._step_flops: dict[tuple[int, bool], tuple[int, dict[str, int]]] = {}

    def latent_size(self, resolution: int) -> int:
        return resolution // self.pipe.vae_scale_factor

    def step_inputs(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """UNet inputs of one step: 2 rows ``[z_t, z_I]`` per branch, a timestep, the prompt pair."""
        size = self.latent_size(resolution)
        generator = torch.Generator(device="cpu").manual_seed(resolution)
        sample = torch.randn(2, self.unet.config.in_channels, size, size, generator=generator)
        sample = sample.to(self.runtime.device, self.unet.dtype)
        timestep = torch.tensor(500, device=self.runtime.device)
        return sample, timestep, self.prompts

    def unet_forward(self, sample: torch.Tensor, timestep: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=prompts, return_dict=False)[0]

    def step_flops(self, resolution: int, clsa: bool) -> tuple[int, dict[str, int]]:
        key = (resolution, clsa)
        if key not in self._step_flops:
            inputs = self.step_inputs(resolution)
            with attention_mode(self.unet, clsa):
                self._step_flops[key] = count_flops(lambda: self.unet_forward(*inputs))
        return self._step_flops[key]

    def measure_graphed(
        self, fn: Callable[..., torch.Tensor], args: tuple[torch.Tensor, ...], flops: int | None
    ) -> dict[str, Any]:
        """``fn(*args)`` replayed from a CUDA graph (captured during the first warm-up call)."""
        if not self.runtime.is_cuda:
            return dict(NEEDS_CUDA)
        graphed = CUDAGraphed(fn)
        try:
            return attempt(lambda: self.runtime.measure(lambda: graphed(*args), flops, warmup=self.runtime.warmup))
        finally:
            graphed.release()

    def measure_forms(
        self, fn: Callable[..., torch.Tensor], args: tuple[torch.Tensor, ...], flops: int | None = None
    ) -> dict[str, Any]:
        """FLOPs of ``fn(*args)`` (counted unless given) and its time eager and replayed from a CUDA graph."""
        if flops is None:
            flops, _ = count_flops(lambda: fn(*args))
        return {
            "flops": flops,
            "eager": attempt(lambda: self.runtime.measure(lambda: fn(*args), flops)),
            "cuda_graph": self.measure_graphed(fn, args, flops),
        }

    def decode_inputs(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """A random mixture in [-1, 1] of side ``resolution``, 2 random latents ``[T; R]`` and the mixture's FGFM
        features: the inputs of the pipeline's encode and decode."""
        size = self.latent_size(resolution)
        generator = torch.Generator(device="cpu").manual_seed(2)
        pixels = torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1
        pixels = pixels.to(self.runtime.device, self.pipe.vae.dtype)
        _, features = self.pipe.encode_mixture(pixels)
        latents = torch.randn(2, self.pipe.vae.config.latent_channels, size, size, generator=generator)
        return pixels, latents.to(self.runtime.device, self.unet.dtype), features

    def decode_fgfm(self, latents: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        """The pipeline's decode: ``[T; R]`` latents modulated by the mixture's features at the default strength."""
        return self.pipe.decode_latents(latents, list(features), self.pipe.config.default_fgfm_strength)

    def pipeline_call(
        self, resolution: int, mode: str, cuda_graphs: bool | None = False, one_step: bool = False,
        processing_resolution: int | None = None, detail_transfer: str | None = None,
    ) -> Callable[[], Any]:
        """A call on a random square image of side ``resolution`` with guidance ``mode``: ``--steps`` sampling steps,
        or (``one_step``) the pipeline's one-step mode; processed at ``resolution`` unless ``processing_resolution``
        says otherwise, with the pipeline's detail transfer unless ``detail_transfer`` is given."""
        image = torch.rand(3, resolution, resolution, generator=torch.Generator().manual_seed(resolution))

        def call() -> Any:
            return self.pipe(
                image,
                num_inference_steps=1 if one_step else self.args.steps,  # 1 step: the one-step mode
                processing_resolution=processing_resolution or resolution,
                detail_transfer=detail_transfer,
                composition_guidance=mode,
                output_type="pt",
                generator=torch.Generator().manual_seed(0),
                cuda_graphs=cuda_graphs,
            )

        return call


# --------------------------------------------------------------------------------------------- sections


def section_unet_step(bench: ModelBench) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for resolution in bench.args.resolutions:
        inputs = bench.step_inputs(resolution)
        entry: dict[str, Any] = {"latent_size": bench.latent_size(resolution), "rows": inputs[0].shape[0],
                                 "prompt_shape": list(inputs[2].shape)}
        variants = (("plain", False, False, False), ("clsa", True, False, False),
                    ("clsa_channels_last", True, True, False), ("clsa_fused_qkv", True, False, True))
        for variant, clsa, layout, fused in variants:
            flops, by_op = bench.step_flops(resolution, clsa)
            sample = inputs[0].contiguous(memory_format=torch.channels_last) if layout else inputs[0]
            args = (sample, inputs[1], inputs[2])
            with attention_mode(bench.unet, clsa), channels_last(layout, bench.unet), fused_qkv(bench.unet, fused):
                entry[variant] = {**bench.measure_forms(bench.unet_forward, args, flops), "flops_by_op": by_op}
            log(f"  unet_step {resolution} {variant}: eager {entry[variant]['eager'].get('median_ms')} ms")
        entry["clsa_over_plain_flops"] = entry["clsa"]["flops"] / entry["plain"]["flops"]
        results[str(resolution)] = entry
    return results


def section_sdpa_backends(bench: ModelBench) -> dict[str, Any]:
    if not bench.runtime.is_cuda:
        return dict(NEEDS_CUDA)
    results: dict[str, Any] = {}
    for resolution in bench.args.resolutions:
        inputs = bench.step_inputs(resolution)
        flops, _ = bench.step_flops(resolution, True)
        step = lambda: bench.unet_forward(*inputs)
        with attention_mode(bench.unet, True):
            entry: dict[str, Any] = {"default": attempt(lambda: bench.runtime.measure(step, flops))}
            for name, backend in SDPA_BACKENDS.items():
                with sdpa_kernel(backend):  # every attention of the step (CLSA and the prompt attention)
                    entry[name] = attempt(lambda: bench.runtime.measure(step, flops))
                if "No available kernel" in entry[name].get("error", ""):
                    entry[name] = {"unsupported": entry[name]["error"]}
        results[str(resolution)] = entry
    return results


def section_compile(bench: ModelBench) -> dict[str, Any]:
    """torch.compile of the UNet (in place, so the pipeline's own calls use it): the CLSA step and a "fast" call."""
    args, runtime, unet = bench.args, bench.runtime, bench.unet
    largest = max(args.resolutions)
    call = bench.pipeline_call(largest, "fast")
    with attention_mode(unet, True):  # FLOPs counted eagerly, before compiling
        step_flops = {resolution: bench.step_flops(resolution, True)[0] for resolution in args.resolutions}
        call_flops, _ = count_flops(call)
    results: dict[str, Any] = {"backend": args.compile_backend, "mode": args.compile_mode or "default",
                               "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default"),
                               "fx_graph_cache": torch._inductor.config.fx_graph_cache}
    with compiled(args, unet), attention_mode(unet, True):
        for resolution in args.resolutions:
            inputs = bench.step_inputs(resolution)
            flops = step_flops[resolution]
            first_s = runtime.time_ms(lambda: bench.unet_forward(*inputs)) / 1e3  # compiles for this shape
            results[str(resolution)] = {
                "first_call_s": first_s,
                "second_call_ms": runtime.time_ms(lambda: bench.unet_forward(*inputs)),
                "compiled": runtime.measure(lambda: bench.unet_forward(*inputs), flops),
                "compiled_cuda_graph": bench.measure_graphed(bench.unet_forward, inputs, flops),
            }
            log(f"  compile {resolution}: warm-up {first_s:.1f} s")
        results["warmup_total_s"] = sum(results[str(r)]["first_call_s"] for r in args.resolutions)
        pipeline: dict[str, Any] = {"resolution": largest, "guidance_mode": "fast", "steps": args.steps,
                                    "flops": call_flops}
        pipeline["compiled"] = runtime.measure(call, call_flops, warmup=1, repeats=args.pipeline_repeats)
        if runtime.is_cuda:
            graphed_call = bench.pipeline_call(largest, "fast", cuda_graphs=True)
            pipeline["compiled_cuda_graph_unet"] = runtime.measure(
                graphed_call, call_flops, warmup=1, repeats=args.pipeline_repeats
            )
        else:
            pipeline["compiled_cuda_graph_unet"] = dict(NEEDS_CUDA)
        results["pipeline"] = pipeline
    return results


def uncompile(*modules: torch.nn.Module) -> None:
    """Undo ``nn.Module.compile`` of ``modules`` (torch has no public call for this) and forget dynamo's compiled
    graphs."""
    for module in modules:
        module._compiled_call_impl = None
    torch._dynamo.reset()


@contextlib.contextmanager
def compiled(args: argparse.Namespace, *modules: torch.nn.Module) -> Iterator[None]:
    """``modules`` compiled in place (``module.compile()``, as users do, so the pipeline's own calls use them) with
    ``--compile-backend`` and ``--compile-mode``, one graph per shape (``dynamic=False``); uncompiled afterwards."""
    for module in modules:
        module.compile(backend=args.compile_backend, mode=args.compile_mode, dynamic=False)
    try:
        yield
    finally:
        uncompile(*modules)


def section_compile_after_call(bench: ModelBench) -> dict[str, Any]:
    """A "fast" call at the largest resolution, CUDA graphs as the pipeline defaults them, with the UNet compiled
    (in place, as users do: ``pipe.unet.compile()``) before the pipeline's first call and after it. After a call
    the pipeline holds graphs captured from the eager UNet; it must capture them again from the compiled one, so
    the two orders should take the same time (before the fix, compiling after a call changed nothing)."""
    args, runtime, pipe, unet = bench.args, bench.runtime, bench.pipe, bench.unet
    largest = max(args.resolutions)
    call = bench.pipeline_call(largest, "fast", cuda_graphs=None)
    results: dict[str, Any] = {"resolution": largest, "guidance_mode": "fast", "steps": args.steps,
                               "backend": args.compile_backend, "mode": args.compile_mode or "default"}
    with attention_mode(unet, True):
        for order in ("compiled_before_first_call", "compiled_after_first_call"):
            pipe.release_cuda_graphs()
            if order == "compiled_after_first_call":
                call()  # the first call: on CUDA it captures graphs from the eager UNet
            with compiled(args, unet):
                first_s = runtime.time_ms(call) / 1e3  # compiles (and captures graphs from the compiled UNet)
                results[order] = {"first_call_s": first_s,
                                  **runtime.measure(call, warmup=0, repeats=args.pipeline_repeats)}
                log(f"  {order}: warm-up {first_s:.1f} s, {results[order]['median_ms']:.1f} ms per call")
        pipe.release_cuda_graphs()
    results["after_over_before"] = (results["compiled_after_first_call"]["median_ms"]
                                    / results["compiled_before_first_call"]["median_ms"])
    return results


def section_guidance_step(bench: ModelBench) -> dict[str, Any]:
    """One sampling step without guidance, with "fast" and with "full" latent-composition guidance."""
    pipe, runtime = bench.pipe, bench.runtime
    resolution = max(bench.args.resolutions)
    size = bench.latent_size(resolution)
    generator = torch.Generator(device="cpu").manual_seed(1)
    channels = pipe.vae.config.latent_channels
    latents = torch.randn(2, channels, size, size, generator=generator).to(runtime.device, pipe.unet.dtype)
    mixture = torch.randn(1, channels, size, size, generator=generator).to(runtime.device, pipe.unet.dtype)
    pipe.scheduler.set_timesteps(bench.args.steps, device=runtime.device)
    timestep = pipe.scheduler.timesteps[len(pipe.scheduler.timesteps) // 2]
    sampler = DisjointSampling(pipe.scheduler)
    host_timestep = int(timestep)  # as the pipeline does: noise-level lookups on the host, no sync per step
    strength = pipe.config.default_disjoint_strength
    guidance = LatentCompositionGuidance(pipe.composition_net, pipe.config.default_composition_guidance_scale, steps=1)

    def sampling_step(mode: str, checkpointing: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """What the pipeline does in one step before the scheduler step (``mode="off"``: no guidance)."""
        return pipe.guided_model_output(latents, timestep, host_timestep, mixture, bench.prompts, sampler, strength,
                                        None if mode == "off" else guidance, mode, checkpointing)

    results: dict[str, Any] = {"resolution": resolution, "latent_size": size, "guidance_steps": 1,
                               "unet_weights_require_grad": any(p.requires_grad for p in bench.unet.parameters())}
    # "full" as the pipeline runs it (`guided_model_output`): frozen UNet weights and the step's own UNet forward
    # reused for the first guidance gradient; "full" with activation checkpointing (`guidance_checkpointing=True`),
    # "full_without_checkpointing" without (the pipeline's default)
    variants = (("no_grad_step", "off", True), ("fast", "fast", True), ("full", "full", True),
                ("full_without_checkpointing", "full", False))
    for name, mode, checkpointing in variants:
        step = lambda: sampling_step(mode, checkpointing)
        with attention_mode(bench.unet, True):
            results[name] = attempt(lambda: runtime.measure(step, count_flops(step)[0]))
        if name != "no_grad_step" and "median_ms" in results[name] and "median_ms" in results["no_grad_step"]:
            results[name]["x_no_grad"] = results[name]["median_ms"] / results["no_grad_step"]["median_ms"]
        log(f"  guidance_step {name}: {results[name].get('median_ms')} ms")
    return results


def section_vae_decode(bench: ModelBench) -> dict[str, Any]:
    pipe = bench.pipe
    resolution = max(bench.args.resolutions)
    _, latents, features = bench.decode_inputs(resolution)

    def decode_plain(latents: torch.Tensor) -> torch.Tensor:
        return pipe.decode_latents(latents, [], 0.0)

    return {
        "resolution": resolution,
        "rows": 2,
        "fgfm_strength": pipe.config.default_fgfm_strength,
        "fgfm": bench.measure_forms(bench.decode_fgfm, (latents, *features)),
        "plain": bench.measure_forms(decode_plain, (latents,)),
    }


def kernel_category(name: str) -> str:
    """Kind of a CUDA kernel from its name: attention, convolution, linear (GEMM) or rest."""
    lowered = name.lower()
    if any(word in lowered for word in ("flash", "fmha", "sdpa", "attention", "attn")):
        return "attention"
    # cuDNN convolutions are implicit GEMMs; test them before the plain GEMM names. ("convert" is not a convolution.)
    if re.search(r"conv(?!ert)|implicit|winograd|fprop|dgrad|wgrad|cudnn", lowered):
        return "convolution"
    if any(word in lowered for word in ("gemm", "cutlass", "xmma", "sm90", "sm100", "nvjet", "cublas")):
        return "linear"
    return "rest"


def section_profile(bench: ModelBench) -> dict[str, Any]:
    if not bench.runtime.is_cuda:
        return dict(NEEDS_CUDA)
    resolution = max(bench.args.resolutions)
    steps = bench.args.profile_steps
    inputs = bench.step_inputs(resolution)
    flops, _ = bench.step_flops(resolution, True)
    step = lambda: bench.unet_forward(*inputs)
    with attention_mode(bench.unet, True):
        timing = bench.runtime.measure(step, flops)
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    for event in profiler.events():
        if event.device_type == DeviceType.CUDA and not event.is_user_annotation:
            kernels[event.name] = kernels.get(event.name, 0.0) + event.device_time_total / 1e3 / steps  # ms per step
    categories = {kind: {"ms": 0.0, "kernels": 0} for kind in ("attention", "convolution", "linear", "rest")}
    for name, milliseconds in kernels.items():
        categories[kernel_category(name)]["ms"] += milliseconds
        categories[kernel_category(name)]["kernels"] += 1
    busy_ms = sum(kernels.values())
    for entry in categories.values():
        entry["share"] = entry["ms"] / busy_ms if busy_ms else 0.0
    top = sorted(kernels.items(), key=lambda item: -item[1])[:20]
    return {
        "resolution": resolution,
        "attention": "clsa",
        "profiled_steps": steps,
        "step": timing,
        "device_busy_ms_per_step": busy_ms,
        "device_busy_fraction": busy_ms / timing["median_ms"],
        "categories": categories,
        "category_rules": "attention: flash/fmha/sdpa/attention/attn; convolution: conv/implicit/winograd/fprop/"
        "dgrad/wgrad/cudnn (cuDNN's layout transforms included); linear: gemm/cutlass/xmma/sm90/nvjet/cublas; rest",
        "top_kernels": [{"name": name[:160], "category": kernel_category(name), "ms_per_step": ms} for name, ms in top],
    }


def output_difference(first: Any, second: Any) -> float:
    """Largest absolute difference between two pipeline outputs (``output_type="pt"``), over both layers."""
    return max((getattr(first, layer).float() - getattr(second, layer).float()).abs().max().item()
               for layer in ("transmission", "reflection"))


def measure_pipeline_call(bench: ModelBench, resolution: int, mode: str, one_step: bool = False) -> dict[str, Any]:
    """FLOPs of a pipeline call, its time eager and with the pipeline's CUDA graphs (its default on CUDA), and
    how far the two outputs are apart (same seed). Sampling calls are timed ``--pipeline-repeats`` times after the
    FLOP count's call; one-step calls (``one_step``), short, as often as a step: ``--repeats`` after ``--warmup``."""
    runtime, args = bench.runtime, bench.args
    steps = 1 if one_step else args.steps
    warmup, repeats = (runtime.warmup, args.repeats) if one_step else (0, args.pipeline_repeats)
    eager_call = bench.pipeline_call(resolution, mode, cuda_graphs=False, one_step=one_step)
    flops, _ = count_flops(eager_call)  # also an eager warm-up call
    eager = runtime.measure(eager_call, flops, warmup=warmup, repeats=repeats)
    if runtime.is_cuda:
        graphed_call = bench.pipeline_call(resolution, mode, cuda_graphs=True, one_step=one_step)
        graphed = attempt(lambda: runtime.measure(graphed_call, flops, warmup=max(warmup, 1), repeats=repeats))
        if "median_ms" in graphed:
            reference = eager_call()
            graphed["max_abs_diff_vs_eager"] = output_difference(reference, graphed_call())
            if graphed["max_abs_diff_vs_eager"] > 0:  # how far two eager calls with the same seed are apart
                graphed["max_abs_diff_eager_vs_eager"] = output_difference(reference, eager_call())
        bench.pipe.release_cuda_graphs()
    else:
        graphed = dict(NEEDS_CUDA)
    for measured in (eager, graphed):
        if "median_ms" in measured:
            measured["ms_per_step"] = measured["median_ms"] / steps
    return {"flops": flops, "eager": eager, "cuda_graph_unet": graphed}


def section_pipeline(bench: ModelBench) -> dict[str, Any]:
    args = bench.args
    results: dict[str, Any] = {"steps": args.steps, "output_type": "pt"}
    for resolution in args.resolutions:
        entry: dict[str, Any] = {}
        for mode in GUIDANCE_MODES:
            entry[mode] = attempt(lambda: measure_pipeline_call(bench, resolution, mode))
            log(f"  pipeline {resolution} {mode}: eager {lookup(entry[mode], 'eager', 'median_ms')} ms")
        results[str(resolution)] = entry
    return results


def section_one_step(bench: ModelBench) -> dict[str, Any]:
    """One-step calls at each resolution (one UNet call on a zero start latent at the last timestep, then the FGFM
    decode of both layers), eager and with the pipeline's CUDA graphs, and their parts alone: the VAE encode of the
    mixture (with its FGFM features), the UNet call with CLSA and the FGFM decode of the 2 latents. ``call_over_parts``
    (eager call / sum of the eager parts) shows what the rest of the call costs (prompts, pre- and post-processing)."""
    pipe, args = bench.pipe, bench.args

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return pipe.encode_mixture(pixels)[0]  # the features are computed all the same

    results: dict[str, Any] = {"guidance_mode": "off", "output_type": "pt"}
    for resolution in args.resolutions:
        call = attempt(lambda: measure_pipeline_call(bench, resolution, "off", one_step=True))
        entry: dict[str, Any] = {"call": call}
        log(f"  one_step {resolution} call: eager {logged_ms(call, 'eager')}, "
            f"CUDA graphs {logged_ms(call, 'cuda_graph_unet')}")
        pixels, latents, features = bench.decode_inputs(resolution)
        with attention_mode(bench.unet, True):
            parts = {
                "encode": lambda: bench.measure_forms(encode, (pixels,)),
                "unet": lambda: bench.measure_forms(bench.unet_forward, bench.step_inputs(resolution),
                                                    bench.step_flops(resolution, True)[0]),
                "fgfm_decode": lambda: bench.measure_forms(bench.decode_fgfm, (latents, *features)),
            }
            for part, measurement in parts.items():
                entry[part] = attempt(measurement)
                log(f"  one_step {resolution} {part}: eager {logged_ms(entry[part], 'eager')}, "
                    f"CUDA graph {logged_ms(entry[part], 'cuda_graph')}")
        call_ms = lookup(entry, "call", "eager", "median_ms")
        parts_ms = [lookup(entry, part, "eager", "median_ms") for part in parts]
        if call_ms is not None and None not in parts_ms:
            entry["parts_eager_ms"] = sum(parts_ms)
            entry["call_over_parts"] = call_ms / sum(parts_ms)
        results[str(resolution)] = entry
    return results


def section_one_step_compiled(bench: ModelBench) -> dict[str, Any]:
    """The one-step call at each resolution with the UNet, the VAE encoder and the VAE decoder compiled in place:
    the first call's seconds (it compiles them for the shape), then the call timed with the pipeline's CUDA graphs
    off and on (captured from the compiled UNet). FLOPs are counted eagerly, before compiling."""
    args, runtime, pipe = bench.args, bench.runtime, bench.pipe
    modules = {"unet": pipe.unet, "vae.encoder": pipe.vae.encoder, "vae.decoder": pipe.vae.decoder}
    calls = {resolution: bench.pipeline_call(resolution, "off", one_step=True) for resolution in args.resolutions}
    flops = {resolution: count_flops(call)[0] for resolution, call in calls.items()}
    results: dict[str, Any] = {"backend": args.compile_backend, "mode": args.compile_mode or "default",
                               "compiled_modules": list(modules), "guidance_mode": "off", "output_type": "pt"}

    def measure_compiled(resolution: int) -> dict[str, Any]:
        call, call_flops = calls[resolution], flops[resolution]
        first_s = runtime.time_ms(call) / 1e3  # compiles the modules for this shape
        entry: dict[str, Any] = {"flops": call_flops, "first_call_s": first_s,
                                 "compiled": runtime.measure(call, call_flops, repeats=args.repeats)}
        log(f"  one_step_compiled {resolution}: warm-up {first_s:.1f} s, {logged_ms(entry, 'compiled')}")
        if runtime.is_cuda:
            graphed_call = bench.pipeline_call(resolution, "off", cuda_graphs=True, one_step=True)
            entry["compiled_cuda_graph_unet"] = attempt(
                lambda: runtime.measure(graphed_call, call_flops, repeats=args.repeats)
            )
            pipe.release_cuda_graphs()
            log(f"  one_step_compiled {resolution} with CUDA graphs: {logged_ms(entry, 'compiled_cuda_graph_unet')}")
        else:
            entry["compiled_cuda_graph_unet"] = dict(NEEDS_CUDA)
        return entry

    with compiled(args, *modules.values()):
        for resolution in args.resolutions:
            results[str(resolution)] = attempt(lambda: measure_compiled(resolution))
    return results


def section_one_step_fast(bench: ModelBench) -> dict[str, Any]:
    """The levers on the one-step call for a photo of the largest resolution's side: the UNet and the VAE in
    channels-last layout (cuDNN's native layout for bf16 convolutions; ``--fast-layout nchw`` keeps the default
    layout), eager, then compiled (UNet, VAE encoder and decoder; CUDA graphs off and on), each processed at that side
    and at ``--reduced-processing-resolution`` (768: SD 2.1's native size; the layers then get the photo's detail
    back with ``detail_transfer="residual"``), or only at the sides of ``--fast-sizes``."""
    args, runtime, pipe = bench.args, bench.runtime, bench.pipe
    side = max(args.resolutions)
    sizes = sorted(set(args.fast_sizes or (side, args.reduced_processing_resolution)), reverse=True)
    modules = (pipe.unet, pipe.vae.encoder, pipe.vae.decoder)
    transfer = {size: None if size == side else "residual" for size in sizes}
    calls = {size: bench.pipeline_call(side, "off", one_step=True, processing_resolution=size,
                                       detail_transfer=transfer[size]) for size in sizes}
    layout = args.fast_layout
    results: dict[str, Any] = {"photo_side": side, "layout": layout, "backend": args.compile_backend,
                               "mode": args.compile_mode or "default", "compiled_modules": ["unet", "vae.encoder",
                               "vae.decoder"], "guidance_mode": "off", "output_type": "pt"}
    with channels_last(layout == "channels_last", pipe.unet, pipe.vae):
        for size, call in calls.items():
            flops = count_flops(call)[0]
            results[str(size)] = {"processing_resolution": size, "detail_transfer": transfer[size] or "as configured",
                                  "flops": flops, "eager": attempt(lambda: runtime.measure(call, flops))}
            log(f"  one_step_fast {side} at {size}, {layout}: eager {logged_ms(results[str(size)], 'eager')}")
        with compiled(args, *modules):
            for size, call in calls.items():
                entry = results[str(size)]
                entry["first_call_s"] = runtime.time_ms(call) / 1e3  # compiles the modules for this shape
                entry["compiled"] = attempt(lambda: runtime.measure(call, entry["flops"], repeats=args.repeats))
                if runtime.is_cuda:
                    graphed = bench.pipeline_call(side, "off", cuda_graphs=True, one_step=True,
                                                  processing_resolution=size, detail_transfer=transfer[size])
                    entry["compiled_cuda_graph_unet"] = attempt(
                        lambda: runtime.measure(graphed, entry["flops"], repeats=args.repeats))
                    pipe.release_cuda_graphs()
                else:
                    entry["compiled_cuda_graph_unet"] = dict(NEEDS_CUDA)
                log(f"  one_step_fast {side} at {size}, {layout}, compiled: {logged_ms(entry, 'compiled')}, "
                    f"with CUDA graphs {logged_ms(entry, 'compiled_cuda_graph_unet')}")
    return results


def section_tiled(bench: ModelBench) -> dict[str, Any]:
    runtime, args, pipe = bench.runtime, bench.args, bench.pipe
    size, tile = args.tiled_size, args.tile_size
    overlap = tile // 4
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(3))
    tile_image = image[:, :tile, :tile]

    def call(pixels: torch.Tensor, steps: int, cuda_graphs: bool = False) -> Any:
        return pipe(pixels, num_inference_steps=steps, processing_resolution=0, tile_size=tile, tile_overlap=overlap,
                    output_type="pt", generator=torch.Generator().manual_seed(0), cuda_graphs=cuda_graphs)

    tiles = len(tile_boxes(size, size, tile, overlap))
    tile_flops, _ = count_flops(lambda: call(tile_image, args.steps))  # one tile's work; also the eager warm-up
    flops = tiles * tile_flops
    results: dict[str, Any] = {
        "image_size": size, "tile_size": tile, "tile_overlap": overlap, "tiles": tiles, "steps": args.steps,
        "guidance_mode": pipe.config.default_composition_guidance, "flops_estimated_as_tiles_x_one_tile": flops,
        "eager": runtime.measure(lambda: call(image, args.steps), flops, warmup=0, repeats=1),
    }
    if runtime.is_cuda:
        call(tile_image, 1, cuda_graphs=True)  # captures the tile's graph
        results["cuda_graph_unet"] = runtime.measure(lambda: call(image, args.steps, True), flops, warmup=0, repeats=1)
        pipe.release_cuda_graphs()
    else:
        results["cuda_graph_unet"] = dict(NEEDS_CUDA)
    return results


def section_offload(bench: ModelBench) -> dict[str, Any]:
    """A "fast" call at the largest resolution with the pipeline on the GPU (CUDA graphs, the default) and with
    diffusers' ``enable_model_cpu_offload`` (each component moved to the GPU when it runs; graphs off): time, peak
    memory, and the largest difference between the two outputs."""
    runtime, args, pipe = bench.runtime, bench.args, bench.pipe
    resolution = max(args.resolutions)
    call = bench.pipeline_call(resolution, "fast", cuda_graphs=None)
    results: dict[str, Any] = {"resolution": resolution, "guidance_mode": "fast", "steps": args.steps,
                               "resident": runtime.measure(call, warmup=1, repeats=args.pipeline_repeats)}
    reference = call()
    pipe.release_cuda_graphs()
    pipe.enable_model_cpu_offload(device=runtime.device)
    try:
        offloaded = runtime.measure(call, warmup=1, repeats=args.pipeline_repeats)
        offloaded["max_abs_diff_vs_resident"] = output_difference(reference, call())
        results["model_cpu_offload"] = offloaded
    finally:
        pipe.remove_all_hooks()
        pipe.to(runtime.device)
    return results


def measure_peers(runtime: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """A test-time forward of each peer network (random weights) at the largest resolution, in fp32 (their
    precision) and under bf16 autocast: time, FLOPs, floor, peak memory. Their code comes from ``--peers``."""
    peers_module = load_sibling("peers")
    resolution = max(args.resolutions)
    image = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(4)).to(runtime.device)
    results: dict[str, Any] = {"resolution": resolution, "source": str(args.peers)}
    for name in peers_module.REPOS:
        entry: dict[str, Any] = {}
        try:
            model, forward = peers_module.build(name, args.peers)
        except Exception as error:
            traceback.print_exc()
            results[name] = {"error": describe(error)}
            continue
        model.to(runtime.device)
        entry["parameters_millions"] = sum(p.numel() for p in model.parameters()) / 1e6
        for precision, autocast in (("fp32", False), ("bf16_autocast", True)):
            def call() -> Any:
                with torch.autocast(runtime.device.type, dtype=torch.bfloat16, enabled=autocast):
                    return forward(image)

            flops = attempt(lambda: {"flops": count_flops(call)[0]}).get("flops")
            entry[precision] = attempt(lambda: runtime.measure(call, flops, repeats=max(1, runtime.repeats // 2)))
            log(f"  peer {name} {precision}: {entry[precision].get('median_ms')} ms")
        results[name] = entry
        del model, forward
        clear_memory()
    return results


def load_sibling(name: str) -> Any:
    """A module from this folder (``benchmarks/``), which is not a package."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SECTION_FUNCTIONS: dict[str, Callable[[ModelBench], dict[str, Any]]] = {
    "unet_step": section_unet_step,
    "sdpa_backends": section_sdpa_backends,
    "guidance_step": section_guidance_step,
    "vae_decode": section_vae_decode,
    "profile": section_profile,
    "pipeline": section_pipeline,
    "one_step": section_one_step,
    "tiled": section_tiled,
    "offload": section_offload,
    "compile": section_compile,
    "compile_after_call": section_compile_after_call,
    "one_step_compiled": section_one_step_compiled,
    "one_step_fast": section_one_step_fast,
}


# --------------------------------------------------------------------------------------------- targets


def lookup(results: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def best_of(results: dict[str, Any], paths: list[tuple[str, ...]], key: str) -> float | None:
    """Smallest ``key`` over the measurements at ``paths`` (eager and optimized forms of one workload)."""
    values = [lookup(results, *path, key) for path in paths]
    values = [v for v in values if isinstance(v, (int, float))]
    return min(values) if values else None


def step_paths(resolution: str) -> list[tuple[str, ...]]:
    paths = [("unet_step", resolution, variant, form) for variant in ("clsa", "clsa_channels_last", "clsa_fused_qkv")
             for form in ("eager", "cuda_graph")]
    paths += [("compile", resolution, form) for form in ("compiled", "compiled_cuda_graph")]
    return paths + [("sdpa_backends", resolution, backend) for backend in ("default", *SDPA_BACKENDS)]


def pipeline_seconds(results: dict[str, Any]) -> float | None:
    paths = []
    if lookup(results, "pipeline", "steps") == 50:
        paths += [("pipeline", "960", "fast", form) for form in ("eager", "cuda_graph_unet")]
    compiled = lookup(results, "compile", "pipeline") or {}
    if compiled.get("steps") == 50 and compiled.get("resolution") == 960:
        paths += [("compile", "pipeline", form) for form in ("compiled", "compiled_cuda_graph_unet")]
    best = best_of(results, paths, "median_ms")
    return best / 1e3 if best is not None else None


# The targets of issue 11 (one H200, bf16, SD 2.1 architecture): (description, limit, reader of the best value).
TARGETS: list[tuple[str, float, Callable[[dict[str, Any]], float | None]]] = [
    ("dual-branch UNet+CLSA step at 960, multiple of its compute floor", 1.25,
     lambda r: best_of(r, step_paths("960"), "x_floor")),
    ("dual-branch UNet+CLSA step at 512, ms", 5.0, lambda r: best_of(r, step_paths("512"), "median_ms")),
    ("full method (guidance fast, disjoint, FGFM), 50 steps at 960, s", 1.0, pipeline_seconds),
    # both read the pipeline's default form of the full step (no checkpointing), one measurement for both
    ("full-gradient guidance step / no-grad step at 960", 2.5,
     lambda r: lookup(r, "guidance_step", "full_without_checkpointing", "x_no_grad")
     if lookup(r, "guidance_step", "resolution") == 960 else None),
    ("full-gradient guidance step at 960, peak GiB", 8.0,
     lambda r: lookup(r, "guidance_step", "full_without_checkpointing", "peak_gib")
     if lookup(r, "guidance_step", "resolution") == 960 else None),
    ("2048x2048 tiled call, peak GiB", 16.0,
     lambda r: best_of(r, [("tiled", "eager"), ("tiled", "cuda_graph_unet")], "peak_gib")
     if lookup(r, "tiled", "image_size") == 2048 else None),
]


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 11 with the best measured value (eager or optimized); ``None`` where not measured."""
    evaluated = []
    for description, limit, read in TARGETS:
        value = read(results)
        evaluated.append({"target": description, "limit": limit, "measured": value,
                          "met": None if value is None else value <= limit})
    return evaluated


# --------------------------------------------------------------------------------------------- summary

OPTIMIZED_FORMS = ("cuda_graph", "cuda_graph_unet", "compiled", "compiled_cuda_graph", "compiled_cuda_graph_unet")


def summary_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None, str]]:
    """``(workload, eager, best optimized, its form)`` for every timed workload with an eager form."""
    rows = []
    for resolution in ("512", "960"):
        for variant, label in (("plain", "plain attention"), ("clsa", "CLSA"), ("clsa_channels_last", "CLSA, channels-last"),
                                ("clsa_fused_qkv", "CLSA, fused QKV")):
            rows.append((f"UNet step {resolution}, {label}", lookup(results, "unet_step", resolution, variant)))
    for backend in ("flash", "cudnn", "efficient"):
        rows.append((f"UNet step 960, CLSA, SDPA {backend}", {"eager": lookup(results, "sdpa_backends", "960", backend)}))
    for mode in ("no_grad_step", "fast", "full", "full_without_checkpointing"):
        rows.append((f"sampling step 960, guidance {mode}", {"eager": lookup(results, "guidance_step", mode)}))
    for variant in ("fgfm", "plain"):
        rows.append((f"VAE decode 960, {variant}", lookup(results, "vae_decode", variant)))
    for resolution in ("512", "960"):
        for mode in GUIDANCE_MODES:
            steps = lookup(results, "pipeline", "steps")
            rows.append((f"pipeline {resolution}, {steps} steps, guidance {mode}", lookup(results, "pipeline", resolution, mode)))
    one_step_compiled = results.get("one_step_compiled") or {}
    for resolution in ("512", "960"):
        rows.append((f"one-step call {resolution}", lookup(results, "one_step", resolution, "call")))
        if isinstance(one_step_compiled.get(resolution), dict):
            rows.append((f"one-step call {resolution}, torch.compile",
                         {"eager": lookup(results, "one_step", resolution, "call", "eager"),
                          **one_step_compiled[resolution]}))
    fast = results.get("one_step_fast") or {}
    for size, entry in fast.items():
        if isinstance(entry, dict) and "processing_resolution" in entry:
            rows.append((f"one-step call {fast['photo_side']}, processed at {size}, {fast['layout'].replace('_', '-')}",
                         entry))
    rows.append((f"tiled {lookup(results, 'tiled', 'image_size')}", lookup(results, "tiled")))
    offload = results.get("offload") or {}
    if "model_cpu_offload" in offload:
        rows.append((f"pipeline {offload['resolution']}, {offload['steps']} steps, guidance fast, model CPU offload",
                     {"eager": offload["model_cpu_offload"]}))
    compiled = results.get("compile") or {}
    for resolution in ("512", "960"):  # the compiled forms beside the eager step of the unet_step section
        if isinstance(compiled.get(resolution), dict):
            rows.append((f"UNet step {resolution}, CLSA, torch.compile",
                         {"eager": lookup(results, "unet_step", resolution, "clsa", "eager"), **compiled[resolution]}))
    pipeline = compiled.get("pipeline") or {}
    if pipeline and pipeline.get("steps") == lookup(results, "pipeline", "steps"):
        resolution, mode = str(pipeline["resolution"]), pipeline["guidance_mode"]
        rows.append((f"pipeline {resolution}, {pipeline['steps']} steps, guidance {mode}, torch.compile",
                     {"eager": lookup(results, "pipeline", resolution, mode, "eager"), **pipeline}))
    summarized = []
    for label, forms in rows:
        if not isinstance(forms, dict) or not isinstance(forms.get("eager"), dict) or "median_ms" not in forms["eager"]:
            continue
        optimized = [(name, forms[name]) for name in OPTIMIZED_FORMS
                     if isinstance(forms.get(name), dict) and "median_ms" in forms[name]]
        name, best = min(optimized, key=lambda item: item[1]["median_ms"]) if optimized else ("", None)
        summarized.append((label, forms["eager"], best, name))
    return summarized


def merge_reports(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs (``{source name: report}``, oldest first): per model, each section comes from
    the latest run that has it without an error, and keeps the floors of its own run's matmul rate; ``sources``
    says which run every section (and the peers) came from. Targets are evaluated on the merged sections."""
    names = list(reports)
    latest = reports[names[-1]]
    merged: dict[str, Any] = {
        "description": latest["description"] + "; merged from several runs (see `sources`)",
        "status": "merged",
        "environment": latest["environment"],
        "settings": latest["settings"],
        "matmul": latest["matmul"],
        "runs": {name: {"created": r.get("created"), "status": r.get("status"), "matmul_tflops": r["matmul"]["tflops"],
                        "environment": r["environment"], "settings": r["settings"]} for name, r in reports.items()},
        "sources": {},
        "models": {},
    }
    for name, report in reports.items():
        if "peers" in report:
            merged["peers"], merged["sources"]["peers"] = report["peers"], name
        for model, results in report["models"].items():
            if "skipped" in results:
                merged["models"].setdefault(model, dict(results))
                continue
            target = merged["models"].get(model)
            if target is None or "skipped" in target:
                target = merged["models"][model] = {}
            for section, value in results.items():
                if section == "targets" or (isinstance(value, dict) and "error" in value):
                    continue
                target[section] = value
                merged["sources"].setdefault(model, {})[section] = name
    for results in merged["models"].values():
        if "skipped" not in results:
            results["targets"] = evaluate_targets(results)
    return merged


def markdown_summary(report: dict[str, Any]) -> str:
    """The README's tables from a result JSON (complete, cut short or merged): timings, floors, targets, kernels."""
    environment_ = report["environment"]
    if report["status"] == "merged":
        rates = [run["matmul_tflops"] for run in report["runs"].values()]
        rate = (f"merged from {len(rates)} runs, each figure against the bf16 matmul rate measured in its own run "
                f"({min(rates):.0f}-{max(rates):.0f} TFLOP/s)")
    else:
        cut_short = "" if report["status"] == "complete" else "; cut short: the sections missing below did not run"
        rate = f"bf16 matmul rate {report['matmul']['tflops']:.0f} TFLOP/s measured in the same run{cut_short}"
    lines = [f"{environment_.get('gpu', environment_['device'])}, torch {environment_['torch']}, diffusers "
             f"{environment_['diffusers']}, {report['settings']['dtype']}; {rate}."]
    number = lambda value, digits=1: "-" if value is None else f"{value:.{digits}f}"  # noqa: E731
    for name, results in report["models"].items():
        if "skipped" in results:
            continue
        lines += ["", f"**{name}**", "",
                  "| Workload | eager ms | optimized ms (form) | floor ms | best / floor | peak GiB |",
                  "|---|---|---|---|---|---|"]
        for label, eager, best, form in summary_rows(results):
            fastest = best if best is not None and best["median_ms"] < eager["median_ms"] else eager
            optimized = f"{best['median_ms']:.1f} ({form})" if best is not None else "-"
            lines.append(f"| {label} | {eager['median_ms']:.1f} | {optimized} | {number(eager.get('floor_ms'))} | "
                         f"{number(fastest.get('x_floor'), 2)} | {number(eager.get('peak_gib'), 2)} |")
        profile = results.get("profile", {})
        if "categories" in profile:
            shares = ", ".join(f"{kind} {value['ms']:.1f} ms ({value['share']:.0%})"
                               for kind, value in profile["categories"].items())
            lines += ["", f"Kernel time of the {profile['resolution']} CLSA step by kind: {shares}."]
        lines += ["", "| Target | limit | measured | met |", "|---|---|---|---|"]
        for target in results.get("targets") or evaluate_targets(results):
            met = {True: "yes", False: "no", None: "not measured"}[target["met"]]
            lines.append(f"| {target['target']} | {target['limit']} | {number(target['measured'], 2)} | {met} |")
    peers = report.get("peers") or {}
    measured_peers = [(name, entry) for name, entry in peers.items() if isinstance(entry, dict) and "fp32" in entry]
    if measured_peers:
        lines += ["", f"**Peers**, one forward at {peers['resolution']} x {peers['resolution']} (random weights; floors "
                  "at the bf16 matmul rate)", "",
                  "| Network | parameters (M) | fp32 ms | bf16 autocast ms | bf16 / floor | peak GiB (fp32) |",
                  "|---|---|---|---|---|---|"]
        for name, entry in measured_peers:
            fp32, bf16 = entry["fp32"], entry.get("bf16_autocast", {})
            lines.append(f"| {name} | {entry['parameters_millions']:.0f} | {number(fp32.get('median_ms'))} | "
                         f"{number(bf16.get('median_ms'))} | {number(bf16.get('x_floor'), 2)} | "
                         f"{number(fp32.get('peak_gib'), 2)} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- driver


def environment(runtime: Runtime) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(runtime.device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if runtime.is_cuda:
        properties = torch.cuda.get_device_properties(runtime.device)
        info.update({
            "gpu": properties.name,
            "gpu_memory_gib": properties.total_memory / GIB,
            "compute_capability": f"{properties.major}.{properties.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        })
    return info


def default_output(runtime: Runtime, tiny: bool) -> Path:
    if runtime.is_cuda:
        name = torch.cuda.get_device_name(runtime.device).replace("NVIDIA", "")
        prefix = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    else:
        prefix = "cpu_tiny" if tiny else "cpu"
    return Path(__file__).resolve().parent / "results" / f"{prefix}_{datetime.date.today().isoformat()}.json"


class Report:
    """The JSON result, rewritten (atomically) after every section."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        path.parent.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(temporary, self.path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model and small sizes (CPU smoke run)")
    parser.add_argument("--model", help="folder of our shipped small model (skipped when absent)")
    parser.add_argument("--models", help="comma-separated models to run (default: all of them)")
    parser.add_argument("--peers", type=Path, metavar="DIR", help="folder with clones of the peers' code (RDNet/, "
                        "DSIT/; see benchmarks/peers.py): adds a forward of each at the largest resolution")
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)} (default: all but compile)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile sections")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: its default mode)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="bf16 (default; fp32 with --tiny)")
    parser.add_argument("--resolutions", type=lambda s: [int(v) for v in s.split(",")], help="default 512,960")
    parser.add_argument("--steps", type=int, help="sampling steps of pipeline calls (default 50)")
    parser.add_argument("--repeats", type=int, help="timed repeats of each step measurement and one-step call "
                        "(default 20)")
    parser.add_argument("--warmup", type=int, help="warm-up calls before them (default 3)")
    parser.add_argument("--pipeline-repeats", type=int, help="timed repeats of each pipeline call (default 2)")
    parser.add_argument("--tiled-size", type=int, help="side of the tiled image (default 2048)")
    parser.add_argument("--tile-size", type=int, help="tile side (default 960)")
    parser.add_argument("--matmul-size", type=int, help="side of the square matmul that sets the rate (default 8192)")
    parser.add_argument("--profile-steps", type=int, help="steps recorded by the profiler (default 3)")
    parser.add_argument("--reduced-processing-resolution", type=int, help="the second processing resolution of "
                        "one_step_fast (default 768, SD 2.1's native size)")
    parser.add_argument("--fast-layout", choices=("channels_last", "nchw"), default="channels_last",
                        help="memory layout of the UNet and the VAE in one_step_fast")
    parser.add_argument("--fast-sizes", type=lambda s: [int(v) for v in s.split(",")], help="processing resolutions "
                        "of one_step_fast (default: the largest resolution and --reduced-processing-resolution)")
    parser.add_argument("--text-layers", type=int, default=2, help="CLIP layers of the SD 2.1 model (SD 2.1 uses 23)")
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--output", type=Path, help="JSON path (default benchmarks/results/<gpu>_<date>.json)")
    parser.add_argument("--summarize", type=Path, metavar="JSON", help="print the Markdown tables of a result "
                        "JSON (the README's) and exit")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="OUTPUT then result JSONs, oldest "
                        "first: write one report with each section from the latest run that has it, and exit")
    args = parser.parse_args(argv)
    if args.merge is not None and len(args.merge) < 2:
        parser.error("--merge needs an OUTPUT and at least one result JSON")
    for key, value in PROFILES["tiny" if args.tiny else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    chosen = {s.strip() for s in args.only.split(",")} if args.only else set(DEFAULT_SECTIONS)
    chosen |= set(COMPILE_SECTIONS) if args.compile else set()
    if chosen - set(SECTIONS):
        parser.error(f"unknown sections {sorted(chosen - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in chosen]
    if args.models:
        args.models = [m.strip() for m in args.models.split(",")]
        known = {"tiny_random", "small_model"} if args.tiny else {"sd21_arch_random", "small_model"}
        if set(args.models) - known:
            parser.error(f"unknown models {sorted(set(args.models) - known)}; choose from {', '.join(sorted(known))}")
    if args.warmup < 1 or args.repeats < 1 or args.pipeline_repeats < 1:
        parser.error("--warmup, --repeats and --pipeline-repeats must be at least 1")
    return args


# A model under test: its builder (``None``: skipped) and a note saying what it is, or why it is skipped.
ModelEntry = tuple[Callable[[], ReflectionSeparationPipeline] | None, str]


def model_builders(args: argparse.Namespace, runtime: Runtime) -> dict[str, ModelEntry]:
    builders: dict[str, ModelEntry] = {}
    if args.tiny:
        builders["tiny_random"] = (
            lambda: build_pipeline().to(device=runtime.device, dtype=runtime.dtype),
            "the test suite's tiny model (components.build_pipeline), random weights",
        )
    else:
        builders["sd21_arch_random"] = (
            lambda: build_sd21_pipeline(args.text_layers, runtime.device, runtime.dtype),
            f"SD 2.1 architecture, random weights; CLIP text encoder of width 1024 with {args.text_layers} layers "
            "(SD 2.1: 23): it runs once per call on the two prompts, so its cost is negligible",
        )
    if args.model is None:
        builders["small_model"] = (None, "no --model folder given")
    elif not Path(args.model).is_dir():
        builders["small_model"] = (None, f"--model folder {args.model} does not exist")
    else:

        def load() -> ReflectionSeparationPipeline:
            pipe = ReflectionSeparationPipeline.from_pretrained(args.model, torch_dtype=runtime.dtype)
            return pipe.to(runtime.device)

        builders["small_model"] = (load, f"our shipped small model from {args.model}")
    return builders


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.merge is not None:
        output, *inputs = args.merge
        report = merge_reports({path.stem: json.loads(path.read_text()) for path in inputs})
        output.write_text(json.dumps(report, indent=2, default=str))
        log(f"merged {len(inputs)} runs into {output}")
        return report
    if args.summarize is not None:
        report = json.loads(args.summarize.read_text())
        print(markdown_summary(report), end="")
        return report
    runtime = Runtime(torch.device(args.device), DTYPES[args.dtype], args.warmup, args.repeats)
    if runtime.is_cuda:
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    started = time.perf_counter()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = Report(args.output or default_output(runtime, args.tiny), {
        "description": "reflection-separation GPU benchmark (issue 11); see benchmarks/benchmark_gpu.py",
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "status": "running",
        "environment": environment(runtime),
        "settings": settings,
        "notes": [
            ("times: median of `repeats` after `warmup` calls (CUDA events); peak_gib: torch.cuda.max_memory_allocated "
             "from a reset before the warm-ups, weights included"),
            ("flops: torch.utils.flop_counter (matmuls, convolutions, attention; elementwise and normalization work "
             "is not counted); floor_ms = flops / measured matmul rate; x_floor = median_ms / floor_ms"),
            ("cuda_graph: the whole function replayed from one CUDA graph per shape (inputs copied into static "
             "buffers); cuda_graph_unet: the pipeline with `cuda_graphs=True` (its default on CUDA: the denoising "
             "loop's UNet calls replayed, the rest eager); eager: `cuda_graphs=False`"),
        ],
        "matmul": None,
        "models": {},
    })
    log(f"writing {report.path}")

    report.data["matmul"] = measure_matmul(runtime, args.matmul_size)
    runtime.matmul_flops_per_s = report.data["matmul"]["tflops"] * 1e12
    log(f"matmul {args.matmul_size}^3 {args.dtype}: {report.data['matmul']['tflops']:.1f} TFLOP/s")
    report.save()
    if args.peers is not None:
        log("peers")
        with torch.no_grad():
            report.data["peers"] = measure_peers(runtime, args)
        report.save()

    for name, (build, note) in model_builders(args, runtime).items():
        if args.models and name not in args.models:
            continue
        if build is None:
            report.data["models"][name] = {"skipped": note}
            report.save()
            continue
        log(f"building {name}")
        pipe = build()
        pipe.set_progress_bar_config(disable=True)
        results: dict[str, Any] = {"components": describe_components(pipe, note)}
        report.data["models"][name] = results
        bench = ModelBench(pipe, runtime, args)
        for section in args.sections:
            log(f"{name}: {section}")
            section_start = time.perf_counter()
            try:
                with torch.no_grad():
                    results[section] = SECTION_FUNCTIONS[section](bench)
            except Exception as error:  # keep the other sections' results
                traceback.print_exc()
                results[section] = {"error": describe(error)}
            if isinstance(results[section], dict):
                results[section]["section_seconds"] = time.perf_counter() - section_start
            clear_memory()
            report.save()
        results["targets"] = evaluate_targets(results)
        report.save()
        del bench, pipe
        clear_memory()

    report.data["status"] = "complete"
    report.data["total_seconds"] = time.perf_counter() - started
    report.save()
    log(f"done in {report.data['total_seconds']:.0f} s: {report.path}")
    return report.data


if __name__ == "__main__":
    main()
