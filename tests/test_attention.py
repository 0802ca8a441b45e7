"""Cross-layer self-attention against the paper's softmax formula."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from reflection_separation.attention import (
    CrossLayerAttnProcessor,
    join_layers,
    set_cross_layer_attention,
    split_layers,
    uses_cross_layer_attention,
)
from reflection_separation.components import ModelSizeConfig, build_pipeline


def make_attention(dim: int = 16, heads: int = 2) -> Attention:
    torch.manual_seed(0)
    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads)
    attn.set_processor(CrossLayerAttnProcessor())
    return attn.eval()


def paper_formula(attn: Attention, hidden: torch.Tensor) -> torch.Tensor:
    """H^i = softmax(Q^i [K^T; K^R]^T / sqrt(d)) [V^T; V^R] per image and head, written out directly."""
    pairs = hidden.shape[0] // 2
    heads = attn.heads
    outputs = torch.zeros_like(hidden)
    for b in range(pairs):
        h_t, h_r = hidden[b], hidden[pairs + b]
        keys = torch.cat([attn.to_k(h_t), attn.to_k(h_r)], dim=0)
        values = torch.cat([attn.to_v(h_t), attn.to_v(h_r)], dim=0)
        for row, h_i in ((b, h_t), (pairs + b, h_r)):
            query = attn.to_q(h_i)
            d = query.shape[-1] // heads
            per_head = []
            for head in range(heads):
                q = query[:, head * d : (head + 1) * d]
                k = keys[:, head * d : (head + 1) * d]
                v = values[:, head * d : (head + 1) * d]
                weights = torch.softmax(q @ k.T / d**0.5, dim=-1)
                per_head.append(weights @ v)
            outputs[row] = attn.to_out[0](torch.cat(per_head, dim=-1))
    return outputs


@torch.no_grad()
def test_clsa_matches_softmax_formula_for_batch_of_pairs():
    attn = make_attention()
    hidden = torch.randn(6, 10, 16)  # 3 images: rows [T0 T1 T2 R0 R1 R2]
    torch.testing.assert_close(attn(hidden), paper_formula(attn, hidden), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_clsa_differs_from_plain_self_attention():
    attn = make_attention()
    hidden = torch.randn(2, 10, 16)
    clsa = attn(hidden)
    attn.set_processor(AttnProcessor2_0())
    assert (clsa - attn(hidden)).abs().max() > 1e-3


@torch.no_grad()
def test_images_in_a_batch_never_attend_to_each_other():
    attn = make_attention()
    hidden = torch.randn(6, 10, 16)
    changed = hidden.clone()
    changed[1] += 5.0  # transmission of image 1
    changed[4] -= 5.0  # reflection of image 1
    before, after = attn(hidden), attn(changed)
    for row in (0, 2, 3, 5):
        torch.testing.assert_close(before[row], after[row], atol=0, rtol=0)
    assert (before[1] - after[1]).abs().max() > 1e-3
    # and the two layers of one image do interact
    changed_r = hidden.clone()
    changed_r[3] += 5.0  # reflection of image 0
    assert (attn(changed_r)[0] - before[0]).abs().max() > 1e-3


@torch.no_grad()
def test_fused_qkv_projection_gives_the_same_result():
    attn = make_attention()
    hidden = torch.randn(4, 10, 16)
    expected = attn(hidden)
    attn.fuse_projections()
    torch.testing.assert_close(attn(hidden), expected, atol=1e-5, rtol=1e-5)


def test_join_and_split_are_inverse_and_pair_rows():
    hidden = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)
    joined = join_layers(hidden)
    assert joined.shape == (2, 6, 2)
    torch.testing.assert_close(joined[1, :3], hidden[1])  # T of image 1
    torch.testing.assert_close(joined[1, 3:], hidden[3])  # R of image 1
    torch.testing.assert_close(split_layers(joined), hidden)


def test_odd_batch_fails_loudly():
    attn = make_attention()
    with pytest.raises(ValueError, match="odd batch"):
        attn(torch.randn(3, 10, 16))


def test_clsa_refuses_cross_attention_use():
    attn = make_attention()
    with pytest.raises(ValueError, match="attn1"):
        attn(torch.randn(2, 10, 16), encoder_hidden_states=torch.randn(2, 4, 16))


def test_installed_on_every_self_attention_only(tiny_pipe):
    unet = tiny_pipe.unet
    processors = unet.attn_processors
    assert uses_cross_layer_attention(unet)
    for name, processor in processors.items():
        assert isinstance(processor, CrossLayerAttnProcessor) == name.endswith("attn1.processor")
    set_cross_layer_attention(unet, False)
    assert not uses_cross_layer_attention(unet)
    assert not any(isinstance(p, CrossLayerAttnProcessor) for p in unet.attn_processors.values())


@pytest.mark.parametrize("head_dim", [8, 16])
def test_built_unets_have_heads_of_the_configured_width(head_dim):
    config = ModelSizeConfig(unet_channels=(16, 32, 64), unet_attention_head_dim=head_dim,
                             unet_down_blocks=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                             unet_up_blocks=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    unet = build_pipeline(config).unet
    widths = {(module.heads, module.inner_dim) for module in unet.modules() if isinstance(module, Attention)}
    assert widths == {(32 // head_dim, 32), (64 // head_dim, 64)}  # the 16-channel level has no attention


def test_head_width_must_divide_the_attention_blocks():
    with pytest.raises(ValueError, match="does not divide"):
        build_pipeline(ModelSizeConfig(unet_channels=(16, 24), unet_attention_head_dim=16))


@torch.no_grad()
@pytest.mark.parametrize("slice_size", [1, 5, 12, 100])
def test_sliced_clsa_matches_the_softmax_formula(slice_size):
    attn = make_attention(dim=16, heads=4)
    attn.set_processor(CrossLayerAttnProcessor(slice_size))
    hidden = torch.randn(6, 10, 16)  # 3 pairs x 4 heads = 12 (pair, head) rows: 5 leaves a remainder
    torch.testing.assert_close(attn(hidden), paper_formula(attn, hidden), atol=1e-5, rtol=1e-5)


def largest_allocation(fn) -> int:
    """Bytes of the largest block one op allocated during ``fn`` (torch profiler's per-op CPU memory records)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(event.self_cpu_memory_usage for event in prof.events())


@torch.no_grad()
def test_slicing_shrinks_the_largest_attention_score_allocation():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    attn = make_attention(dim=64, heads=4)
    hidden = torch.randn(4, 256, 64)  # 2 pairs x 4 heads, 512 joined tokens: scores 8 x 512 x 512 float32 = 8 MiB
    with sdpa_kernel(SDPBackend.MATH):  # the kernel that materializes the scores (SDPA's fallback)
        whole = largest_allocation(lambda: attn(hidden))
        attn.set_processor(CrossLayerAttnProcessor(1))
        sliced = largest_allocation(lambda: attn(hidden))
    assert whole == 8 * 512 * 512 * 4 and sliced == 512 * 512 * 4


def test_pipeline_attention_slicing_keeps_clsa_with_diffusers_slice_sizes():
    pipe = build_pipeline(ModelSizeConfig(), seed=0)
    pipe.enable_attention_slicing("max")
    self_attn = {n: p for n, p in pipe.unet.attn_processors.items() if n.endswith("attn1.processor")}
    assert uses_cross_layer_attention(pipe.unet) and {p.slice_size for p in self_attn.values()} == {1}
    pipe.enable_attention_slicing(2)
    assert {p.slice_size for n, p in pipe.unet.attn_processors.items() if n.endswith("attn1.processor")} == {2}
    pipe.disable_attention_slicing()
    processors = pipe.unet.attn_processors
    assert uses_cross_layer_attention(pipe.unet) and all(p.slice_size is None for n, p in processors.items() if "attn1" in n)
    assert all(isinstance(p, AttnProcessor2_0) for n, p in processors.items() if "attn2" in n)


def test_auto_attention_slicing_works_with_single_head_layers():
    pipe = build_pipeline(ModelSizeConfig(unet_attention_head_dim=16), seed=0)  # 16 channels: one head
    heads = {m.heads for m in pipe.unet.modules() if hasattr(m, "sliceable_head_dim")}
    pipe.enable_attention_slicing()  # diffusers' "auto": half the heads, at least one
    sizes = {p.slice_size for n, p in pipe.unet.attn_processors.items() if n.endswith("attn1.processor")}
    assert heads == {1, 2} and sizes == {1} and uses_cross_layer_attention(pipe.unet)
