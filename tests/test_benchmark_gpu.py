"""The GPU benchmark script runs every section in its tiny CPU smoke mode and writes a complete JSON."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from reflection_separation import ReflectionSeparationPipelineOutput
from reflection_separation.components import build_pipeline

from .conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/benchmark_gpu.py")


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.{key}", item
            yield from walk(item, f"{path}.{key}")


def test_tiny_cpu_run_writes_every_section(bench, tmp_path):
    output = tmp_path / "bench.json"
    report = bench.main(["--device", "cpu", "--tiny", "--compile", "--compile-backend", "eager",
                         "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(report, default=str))
    assert report["status"] == "complete" and report["environment"]["torch"] == torch.__version__
    assert report["matmul"]["tflops"] > 0
    assert not [path for path, _ in walk(report) if path.endswith(".error")]

    model = report["models"]["tiny_random"]
    assert set(bench.SECTIONS) | {"components", "targets"} <= set(model)
    for resolution in ("32", "48"):
        step = model["unet_step"][resolution]
        assert step["plain"]["flops"] > 0
        assert step["clsa"]["flops"] > step["plain"]["flops"]  # CLSA attends over twice the keys
        assert step["clsa"]["eager"]["x_floor"] > 0 and step["clsa"]["eager"]["floor_ms"] > 0
        for mode in ("off", "fast", "full"):
            assert model["pipeline"][resolution][mode]["flops"] > 0
        assert model["pipeline"][resolution]["full"]["flops"] > model["pipeline"][resolution]["off"]["flops"]
    guided = model["guidance_step"]
    assert guided["full"]["flops"] > guided["fast"]["flops"] > guided["no_grad_step"]["flops"]  # (timings are noisy)
    assert guided["full"]["x_no_grad"] > 0
    assert model["vae_decode"]["fgfm"]["flops"] > model["vae_decode"]["plain"]["flops"]
    assert model["tiled"]["tiles"] > 1 and model["tiled"]["eager"]["median_ms"] > 0
    assert model["offload"]["model_cpu_offload"]["max_abs_diff_vs_resident"] == 0.0
    assert model["compile"]["warmup_total_s"] > 0 and model["compile"]["pipeline"]["compiled"]["median_ms"] > 0
    after_call = model["compile_after_call"]
    assert after_call["compiled_after_first_call"]["median_ms"] > 0 and after_call["after_over_before"] > 0
    one_step = model["one_step"]["48"]
    parts_flops = sum(one_step[part]["flops"] for part in ("encode", "unet", "fgfm_decode"))
    assert parts_flops <= one_step["call"]["flops"] < model["pipeline"]["48"]["off"]["flops"]  # 1 UNet call, not 2
    assert one_step["call_over_parts"] > 0
    assert model["one_step_compiled"]["48"]["first_call_s"] > 0
    assert model["one_step_compiled"]["48"]["compiled"]["median_ms"] > 0
    fast = model["one_step_fast"]
    assert fast["photo_side"] == 48 and fast["32"]["detail_transfer"] == "residual"
    assert fast["32"]["flops"] < fast["48"]["flops"] == one_step["call"]["flops"]  # the same call, in another layout
    assert fast["32"]["compiled"]["median_ms"] > 0 and fast["48"]["first_call_s"] > 0

    # CUDA-only parts are marked, not silently missing
    skipped = {path for path, value in walk(report) if value == "needs CUDA"}
    for path in (".sdpa_backends", ".profile", ".unet_step.48.clsa.cuda_graph", ".vae_decode.fgfm.cuda_graph",
                 ".pipeline.48.fast.cuda_graph_unet", ".tiled.cuda_graph_unet", ".compile.48.compiled_cuda_graph",
                 ".one_step.48.call.cuda_graph_unet", ".one_step.48.unet.cuda_graph",
                 ".one_step_compiled.48.compiled_cuda_graph_unet"):
        assert f".models.tiny_random{path}.skipped" in skipped, path
    assert report["models"]["small_model"] == {"skipped": "no --model folder given"}
    assert [t["measured"] for t in model["targets"]] == [None] * len(bench.TARGETS)  # tiny sizes: no 512/960


def test_channels_last_is_undone_after_the_block(bench):
    pipe = build_pipeline(seed=1)
    conv = pipe.vae.decoder.conv_in.weight
    with bench.channels_last(True, pipe.unet, pipe.vae):
        assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert not pipe.vae.decoder.conv_in.weight.is_contiguous()
    assert pipe.vae.decoder.conv_in.weight.is_contiguous() and torch.equal(pipe.vae.decoder.conv_in.weight, conv)


def test_summary_tables_carry_the_measured_numbers(bench, tmp_path, capsys):
    step = {"eager": {"median_ms": 30.0, "x_floor": 2.0, "floor_ms": 15.0, "peak_gib": 2.5},
            "cuda_graph": {"median_ms": 20.0, "x_floor": 1.2}}
    report = {"environment": {"device": "cuda", "gpu": "NVIDIA H200", "torch": "2.x", "diffusers": "0.x"},
              "settings": {"dtype": "bf16"}, "matmul": {"tflops": 747.0}, "status": "running",
              "models": {"small_model": {"skipped": "no --model folder given"},
                         "sd21_arch_random": {"unet_step": {"960": {"clsa": step}},
                                              "one_step": {"512": {"call": {"eager": {"median_ms": 40.0},
                                                                            "cuda_graph_unet": {"median_ms": 35.0}}}},
                                              "one_step_compiled": {"512": {"compiled": {"median_ms": 30.0}}}}}}
    path = tmp_path / "result.json"
    path.write_text(json.dumps(report))
    assert bench.main(["--summarize", str(path)]) == report
    printed = capsys.readouterr().out
    assert "| UNet step 960, CLSA | 30.0 | 20.0 (cuda_graph) | 15.0 | 1.20 | 2.50 |" in printed
    assert "| one-step call 512 | 40.0 | 35.0 (cuda_graph_unet) |" in printed
    assert "| one-step call 512, torch.compile | 40.0 | 30.0 (compiled) |" in printed
    assert "| dual-branch UNet+CLSA step at 960, multiple of its compute floor | 1.25 | 1.20 | yes |" in printed
    assert "cut short" in printed and "small_model" not in printed


def test_model_folder_is_benchmarked_or_skipped(bench, tmp_path):
    build_pipeline(seed=1).save_pretrained(tmp_path / "small")
    report = bench.main(["--device", "cpu", "--tiny", "--only", "unet_step", "--model", str(tmp_path / "small"),
                         "--output", str(tmp_path / "a.json")])
    assert report["models"]["small_model"]["unet_step"]["48"]["clsa"]["flops"] > 0
    assert set(report["models"]["tiny_random"]) == {"components", "unet_step", "targets"}
    report = bench.main(["--device", "cpu", "--tiny", "--only", "unet_step", "--model", str(tmp_path / "missing"),
                         "--output", str(tmp_path / "b.json")])
    assert "does not exist" in report["models"]["small_model"]["skipped"]
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--tiny", "--only", "nonsense"])


def test_kernel_categories(bench):
    names = {
        "pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>": "attention",
        "fmha_cutlassF_bf16_aligned_64x64_rf_sm80": "attention",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3": "attention",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "convolution",
        "void cudnn::winograd_nonfused::winogradForwardData4x4<float, __nv_bfloat16>": "convolution",
        "cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_64x64_64x5_nhwc>": "convolution",
        "nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NNT": "linear",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1": "linear",
        "void at::native::elementwise_kernel<128, 2, convert_kernel>": "rest",
        "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::BFloat16, float>": "rest",
        "Memcpy HtoD (Pageable -> Device)": "rest",
    }
    assert {name: bench.kernel_category(name) for name in names} == names


def test_targets_read_the_best_measured_form(bench):
    step = {"eager": {"median_ms": 30.0, "x_floor": 2.0}, "cuda_graph": {"median_ms": 20.0, "x_floor": 1.2}}
    results = {
        "unet_step": {"960": {"clsa": step}, "512": {"clsa": {"eager": {"median_ms": 6.0}}}},
        "sdpa_backends": {"960": {"cudnn": {"unsupported": "RuntimeError: no kernel"}}},
        "pipeline": {"steps": 50, "960": {"fast": {"eager": {"median_ms": 1500.0}}}},
        "compile": {"pipeline": {"steps": 50, "resolution": 960, "compiled": {"median_ms": 900.0}}},
        "guidance_step": {"resolution": 960, "full": {"x_no_grad": 3.0, "peak_gib": 20.0},
                          "full_without_checkpointing": {"x_no_grad": 2.9, "peak_gib": 7.0}},
    }
    evaluated = {t["target"]: (t["measured"], t["met"]) for t in bench.evaluate_targets(results)}
    assert list(evaluated.values()) == [(1.2, True), (6.0, False), (0.9, True), (2.9, False), (7.0, True),
                                        (None, None)]


def test_output_difference_covers_both_layers(bench):
    zeros = torch.zeros(1, 3, 4, 4)
    first = ReflectionSeparationPipelineOutput(transmission=zeros, reflection=zeros)
    shifted = zeros.clone().index_fill_(3, torch.tensor([1]), 0.25)
    second = ReflectionSeparationPipelineOutput(transmission=zeros, reflection=shifted)
    assert bench.output_difference(first, first) == 0.0
    assert bench.output_difference(first, second) == 0.25


def test_merge_takes_each_section_from_the_latest_run_without_an_error(bench, tmp_path, capsys):
    def report(tflops: float, sections: dict[str, Any], peers: dict[str, Any] | None = None) -> dict[str, Any]:
        data = {"description": "d", "status": "complete", "environment": {"device": "cuda", "torch": "2.x",
                "diffusers": "0.x"}, "settings": {"dtype": "bf16"}, "matmul": {"tflops": tflops},
                "models": {"sd21_arch_random": sections, "small_model": {"skipped": "no --model folder given"}}}
        return data if peers is None else {**data, "peers": peers}

    step = {"960": {"clsa": {"eager": {"median_ms": 30.0, "x_floor": 2.0}}}}
    newer_step = {"960": {"clsa": {"eager": {"median_ms": 25.0, "x_floor": 1.6}}}}
    paths = []
    for name, data in (("old", report(700.0, {"unet_step": step, "tiled": {"image_size": 2048}})),
                       ("new", report(780.0, {"unet_step": newer_step, "tiled": {"error": "OOM"}}, {"resolution": 960}))):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(data))
    merged = bench.main(["--merge", str(tmp_path / "merged.json"), *map(str, paths)])
    assert merged["sources"] == {"sd21_arch_random": {"unet_step": "new", "tiled": "old"}, "peers": "new"}
    assert merged["models"]["sd21_arch_random"]["unet_step"] == newer_step
    assert merged["models"]["sd21_arch_random"]["tiled"] == {"image_size": 2048}  # the failed newer one is dropped
    assert merged["models"]["sd21_arch_random"]["targets"][0]["measured"] == 1.6
    assert merged["models"]["small_model"] == {"skipped": "no --model folder given"}
    assert json.loads((tmp_path / "merged.json").read_text()) == json.loads(json.dumps(merged))
    bench.main(["--summarize", str(tmp_path / "merged.json")])
    printed = capsys.readouterr().out
    assert "merged from 2 runs" in printed and "(700-780 TFLOP/s)" in printed


def test_fused_qkv_variant_keeps_clsa_and_the_result_and_restores_the_unet(bench):
    from reflection_separation.attention import uses_cross_layer_attention

    unet = build_pipeline(seed=0).unet
    sample, timestep = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(10)
    prompts = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(1))
    forward = lambda: unet(sample, timestep, encoder_hidden_states=prompts).sample  # noqa: E731
    with torch.no_grad():
        reference = forward()
        with bench.fused_qkv(unet, True):
            assert uses_cross_layer_attention(unet)
            assert any(hasattr(module, "to_qkv") for module in unet.modules())
            fused = forward()
        assert not any(hasattr(module, "to_qkv") or hasattr(module, "to_kv") for module in unet.modules())
        assert uses_cross_layer_attention(unet)
        torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(forward(), reference, atol=0, rtol=0)


def test_one_step_fast_layout_and_sizes_are_chosen(bench, tmp_path):
    report = bench.main(["--device", "cpu", "--tiny", "--models", "tiny_random", "--only", "one_step_fast",
                         "--compile-backend", "eager", "--fast-layout", "nchw", "--fast-sizes", "32",
                         "--output", str(tmp_path / "bench.json")])
    fast = report["models"]["tiny_random"]["one_step_fast"]
    assert fast["layout"] == "nchw" and fast["photo_side"] == 48
    assert [key for key in fast if key.isdigit()] == ["32"]  # only the size asked for, processed below the photo
    assert fast["32"]["detail_transfer"] == "residual" and fast["32"]["compiled"]["median_ms"] > 0
