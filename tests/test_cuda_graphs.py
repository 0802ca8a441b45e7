"""CUDA-graph replay of the denoising loop: what can be checked without a GPU (the replay itself runs in
``benchmarks/benchmark_gpu.py``, which records the largest difference to eager outputs)."""

import numpy as np
import pytest
import torch

from reflection_separation.attention import set_cross_layer_attention
from reflection_separation.cuda_graphs import CUDAGraphed, forward_signature, weights_signature

from .conftest import FAST, generator, random_image


def test_cuda_graphs_default_off_on_cpu_and_explicit_request_is_refused(tiny_pipe, rng):
    image = random_image(rng)
    default = tiny_pipe(image, generator=generator(0), **FAST)
    eager = tiny_pipe(image, generator=generator(0), cuda_graphs=False, **FAST)
    np.testing.assert_array_equal(default.transmission, eager.transmission)
    assert getattr(tiny_pipe, "_cuda_graphed", None) is None  # nothing captured or kept on CPU
    with pytest.raises(ValueError, match="needs the pipeline on a CUDA device"):
        tiny_pipe(image, cuda_graphs=True, **FAST)


def test_calls_with_gradients_run_eagerly(tiny_pipe):
    latents, mixture = torch.randn(2, 4, 8, 8), torch.randn(1, 4, 8, 8)
    prompts, timestep = tiny_pipe.encode_layer_prompts(), torch.tensor(10)
    graphed = CUDAGraphed(tiny_pipe.predict_noise, owner=tiny_pipe.unet)
    with torch.enable_grad():  # the "full" guidance backpropagates through the UNet
        output = graphed(latents, timestep, mixture, prompts)
    assert output.requires_grad and not graphed.graphs
    with torch.no_grad():
        torch.testing.assert_close(output.detach(), tiny_pipe.predict_noise(latents, timestep, mixture, prompts))


def test_graphs_are_dropped_when_the_unet_moves_or_changes(tiny_pipe):
    graphed = tiny_pipe._graphed_predict_noise()
    assert graphed.owner is tiny_pipe.unet
    graphed.graphs["captured"] = "a graph"
    graphed.check_owner()
    assert graphed.graphs  # nothing changed: kept
    for change in (lambda: tiny_pipe.unet.to(torch.float64), lambda: set_cross_layer_attention(tiny_pipe.unet, False)):
        before = weights_signature(tiny_pipe.unet)
        change()
        assert weights_signature(tiny_pipe.unet) != before
        graphed.graphs["captured"] = "a graph"
        assert tiny_pipe._graphed_predict_noise() is graphed and not graphed.graphs
    tiny_pipe.unet = type(tiny_pipe.unet).from_config(tiny_pipe.unet.config)
    assert tiny_pipe._graphed_predict_noise() is not graphed  # a new UNet gets its own graphs


def test_at_most_max_graphs_are_kept_least_recently_used_first(monkeypatch):
    class FakeGraph:
        def replay(self) -> None:
            pass

    captured = []

    def capture(args):
        captured.append(args[0].shape[0])
        return FakeGraph(), [a.clone() for a in args], torch.zeros(args[0].shape)

    graphed = CUDAGraphed(lambda x: x * 2, max_graphs=2)
    monkeypatch.setattr(graphed, "_capture", capture)
    with torch.no_grad():
        for size in (1, 2, 1, 3, 1, 2):
            assert graphed(torch.ones(size)).shape == (size,)
    assert captured == [1, 2, 3, 2]  # 2 was evicted by 3 (1 had been used since), then captured again
    assert [key[0][0] for key in graphed.graphs] == [(1,), (2,)]


def test_graphs_are_recaptured_when_the_unet_is_compiled_after_a_call(tiny_pipe):
    """``unet.compile()`` after a first call (and every recompile) must not replay graphs of the eager forward;
    ``torch.compile(unet)`` gives a new module, so new graphs. Nothing is compiled here: compiling is lazy."""
    graphed = tiny_pipe._graphed_predict_noise()
    graphed.graphs["captured"] = "a graph of the eager UNet"
    eager = forward_signature(tiny_pipe.unet)
    tiny_pipe.unet.compile(dynamic=False)
    first_compile = forward_signature(tiny_pipe.unet)
    assert first_compile != eager and weights_signature(tiny_pipe.unet) == graphed.signature[0]
    assert tiny_pipe._graphed_predict_noise() is graphed and not graphed.graphs
    graphed.graphs["captured"] = "a graph of the compiled UNet"
    assert tiny_pipe._graphed_predict_noise() is graphed and graphed.graphs  # same compiled forward: kept
    tiny_pipe.unet.compile(mode="max-autotune-no-cudagraphs")  # recompiled
    assert forward_signature(tiny_pipe.unet) != first_compile
    assert tiny_pipe._graphed_predict_noise() is graphed and not graphed.graphs
    tiny_pipe.unet._compiled_call_impl = None  # back to eager: the eager forward's signature again
    assert forward_signature(tiny_pipe.unet) == eager
    unet = tiny_pipe.unet
    tiny_pipe.unet = torch.compile(unet)
    assert forward_signature(tiny_pipe.unet) != eager and tiny_pipe._graphed_predict_noise() is not graphed
