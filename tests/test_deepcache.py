"""DeepCache-style feature reuse: the shallow branch reproduces the full UNet from a fresh cache, and skips work."""

import dataclasses

import numpy as np
import pytest
import torch

from napari_crafts.generation.region import GenerationSettings, run
from napari_crafts.generation.tiling import noise_field
from napari_crafts.model.deepcache import (
    DeepCacheUnsupported,
    FeatureCache,
    check_supported,
    full_step_indices,
    shallow_controlnet,
    shallow_unet,
    skip_count,
)


def _sd15_like_nets():
    """A small UNet laid out like SD1.5's (cross-attention in the first down and last up block) and its ControlNet."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    ).eval()
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).eval()
    for p in net.parameters():  # from_unet zero-initialises the residual convs: make them matter
        torch.nn.init.normal_(p, std=0.05) if p.ndim > 1 else None
    return unet, net


def _inputs(net, batch=2, size=16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, size, size, generator=g)
    text = torch.randn(batch, 7, 32, generator=g)
    up = 2 ** (len(net.config.conditioning_embedding_out_channels) - 1)  # control px per latent px
    cond = torch.rand(batch, 3, size * up, size * up, generator=g)
    return x, torch.tensor(501), text, cond


@pytest.mark.parametrize("layout", ["sd15", "tiny"])
def test_shallow_branch_with_a_fresh_cache_equals_the_full_unet(layout, engine):
    if layout == "sd15":
        unet, net = _sd15_like_nets()
    else:  # the tiny demo model: plain (no cross-attention) first and last blocks
        unet, net = engine.unet, engine.controlnet()
    check_supported(unet, net)
    x, t, text, cond = _inputs(net, size=unet.config.sample_size)
    with torch.inference_mode():
        down, mid = net(x, t, encoder_hidden_states=text, controlnet_cond=cond, conditioning_scale=0.8,
                        return_dict=False)
        with FeatureCache(unet) as cache:
            full = unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid, return_dict=False)[0]
            shallow_res = shallow_controlnet(net, x, t, text, cond, 0.8, skip_count(unet))
            shallow = shallow_unet(unet, cache, x, t, text, shallow_res)
    assert len(shallow_res) == skip_count(unet) == unet.config.layers_per_block + 1
    for a, b in zip(shallow_res, down, strict=False):  # the shallow residuals are the first of the full ones
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(shallow, full, rtol=0, atol=1e-5)
    # and a stale cache (another timestep) gives another output: the cache is really used
    with torch.inference_mode(), FeatureCache(unet) as cache:
        unet(x * 0.5, torch.tensor(901), encoder_hidden_states=text, down_block_additional_residuals=down,
             mid_block_additional_residual=mid, return_dict=False)
        stale = shallow_unet(unet, cache, x, t, text, shallow_res)
    assert (stale - full).abs().max() > 1e-3


def test_full_steps_are_every_nth_from_the_first():
    assert full_step_indices(7, 3) == {0, 3, 6}
    assert full_step_indices(4, 1) == {0, 1, 2, 3}


def _count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda *_: calls.append(1))


def test_cached_steps_skip_the_deep_blocks(engine):
    noise = noise_field(3, 0, 0, 32, 32)[None]
    control = np.zeros((1, 32 * engine.vae_scale_factor, 32 * engine.vae_scale_factor, 3), np.uint8)
    control[:, 10:30, 12:40] = 255
    net = engine.controlnet()
    unet_calls, h1 = _count_calls(engine.unet.mid_block)
    net_calls, h2 = _count_calls(net.mid_block)
    try:
        cached = run(engine.generate(noise, control, prompt="x", steps=6, scheduler="ddim", cache_interval=3))
        assert len(unet_calls) == len(net_calls) == 2  # steps 0 and 3 only
        exact = run(engine.generate(noise, control, prompt="x", steps=6, scheduler="ddim"))
        assert len(unet_calls) == len(net_calls) == 2 + 6
    finally:
        h1.remove(), h2.remove()
    again = run(engine.generate(noise, control, prompt="x", steps=6, scheduler="ddim", cache_interval=3))
    np.testing.assert_array_equal(cached, again)  # deterministic
    assert not np.array_equal(cached, exact)  # and approximate
    assert not engine.unet.up_blocks[-1]._forward_pre_hooks  # the cache's hook is gone after the run


def test_feature_reuse_combines_with_a_cfg_cut_off(engine):
    """5 steps, full UNet at steps 0, 2, 4, guidance for the first round(2.5) = 2: every step sees the batch
    its guidance needs (2 then 1), and the deep blocks run only on full steps, at that step's batch."""
    noise = noise_field(3, 0, 0, 32, 32)[None]
    batches, deep = [], []
    h1 = engine.unet.conv_in.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    h2 = engine.unet.mid_block.register_forward_hook(lambda m, args, out: deep.append(out.shape[0]))
    try:
        out = run(engine.generate(noise, None, prompt="x", steps=5, scheduler="ddim", cache_interval=2,
                                  cfg_cutoff=0.5))
    finally:
        h1.remove(), h2.remove()
    assert batches == [2, 2, 1, 1, 1] and deep == [2, 1, 1]
    again = run(engine.generate(noise, None, prompt="x", steps=5, scheduler="ddim", cache_interval=2, cfg_cutoff=0.5))
    exact = run(engine.generate(noise, None, prompt="x", steps=5, scheduler="ddim", cfg_cutoff=0.5))
    np.testing.assert_array_equal(out, again)
    other = run(engine.generate(noise_field(4, 0, 0, 32, 32)[None], None, prompt="x", steps=5, scheduler="ddim",
                                cfg_cutoff=0.5))
    # approximate, but the same picture (measured: ~12 grey levels from exact; another seed ~44)
    assert 0 < np.abs(out.astype(int) - exact).mean() < np.abs(exact.astype(int) - other).mean() / 2


def test_unsupported_unets_are_refused_with_a_message(engine):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=3,
    )
    with pytest.raises(DeepCacheUnsupported, match="cache interval 1"):
        check_supported(unet)


def test_settings_with_feature_reuse_are_approximate_and_say_so():
    s = dataclasses.replace(GenerationSettings(), cache_interval=3)
    assert not s.exact and GenerationSettings().exact
    assert "full UNet every 3 steps" in s.record()["approximation"]
