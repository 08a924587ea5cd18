"""Wan2.1 VAE: parity with the official reference tensors, precision, chunking and causality, tiling,
checkpoint loading and input errors. All on the CPU, with tiny widths and the real 2B structure."""

from __future__ import annotations

import logging

import pytest
import torch

import cosmos_engine
from cosmos_engine import ops
from cosmos_engine.errors import CheckpointError
from cosmos_engine.models.wan_vae import (LATENT_MEAN, LATENT_STD, FeatureCache, VAEConfig, WanVAE,
                                          latent_normalization, load_vae)
from tests.conftest import load_reference_case

# max|out - ref| / max|ref| in fp32. The reference's own fp32-vs-fp64 spread is 5e-7 (latent) and 4.3e-6
# (decode), so 1e-5 leaves ~2x headroom for a different but equally exact summation order.
REL_TOL = 1e-5


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def random_vae(dim: int = 4, seed: int = 0, **overrides) -> WanVAE:
    """A VAE of the 2B structure with random weights drawn as the reference case draws them (convs
    N(0, 1/fan_in), biases 0.02 N, norm gammas 1 + 0.1 N), so no block is an identity."""
    vae = WanVAE(VAEConfig(dim=dim, **overrides)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.02 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return vae


def random_video(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def case():
    return load_reference_case("wan21_vae.pt")


@pytest.fixture(scope="module")
def official_vae(case):
    vae = WanVAE(VAEConfig(**case["config"]))
    vae.load_state_dict(case["state_dict"])
    return vae.eval()


@pytest.fixture(scope="module")
def vae():
    return random_vae()


# ---- parity with the official model ---------------------------------------------------------------------

def test_config_takes_the_official_argument_names(case):
    cfg = VAEConfig(**case["config"])
    assert cfg.temperal_downsample == (False, True, True) and cfg.temporal_window == 16
    with pytest.raises(TypeError, match="temporal_downsample"):
        VAEConfig(**{**case["config"], "temporal_downsample": [False, True, True]})
    with pytest.raises(ValueError, match="temporal_window"):
        VAEConfig(temporal_window=6)


def test_official_state_dict_has_exactly_our_keys(case, official_vae):
    ours = {k: tuple(v.shape) for k, v in official_vae.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in case["state_dict"].items()}
    assert len(ours) == 194


def test_latent_normalization_uses_the_bf16_rounded_constants(case):
    mean, inv_std = latent_normalization()
    assert torch.equal(mean, case["meta"]["latent_mean_bf16_as_fp32"])
    assert torch.equal(inv_std, case["meta"]["latent_inv_std_bf16_as_fp32"])
    assert torch.equal(torch.tensor(LATENT_MEAN), case["meta"]["latent_mean_fp32"])
    assert torch.equal(torch.tensor(LATENT_STD), case["meta"]["latent_std_fp32"])


KERNEL_BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(
    not cosmos_engine.build_info()["loaded"], reason="the compiled library _C is not built"))]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("output", ["latent_mu_raw", "latent_normalized", "decoded_video"])
def test_parity_with_official_fp32(case, official_vae, output, backend):
    """Today's path (reference ops, NCDHW) and the kernel path (compiled ops, channels-last) both match."""
    video = case["inputs"]["video_B_3_T_H_W"]
    with ops.force_backend(backend):
        if output == "latent_mu_raw":
            out = official_vae.encode_mu(video)
        elif output == "latent_normalized":
            out = official_vae.encode(video)
        else:
            out = official_vae.decode(case["outputs"]["latent_normalized"])
    ref = case["outputs"][output]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= REL_TOL


# ---- precision, chunking, causality on other shapes ---------------------------------------------------------

@pytest.fixture(scope="module")
def batch_video():
    return random_video(2, 3, 9, 24, 40)


@pytest.fixture(scope="module")
def batch_latent(vae, batch_video):
    return vae.encode(batch_video)


@pytest.fixture(scope="module")
def batch_decoded(vae, batch_latent):
    return vae.decode(batch_latent)


def test_fp32_matches_fp64(batch_video, batch_latent, batch_decoded):
    vae64 = random_vae().double()
    latent64 = vae64.encode(batch_video.double())
    assert batch_latent.shape == (2, 16, 3, 3, 5)
    assert rel_err(batch_latent, latent64) <= REL_TOL
    assert batch_decoded.shape == batch_video.shape
    assert rel_err(batch_decoded, vae64.decode(batch_latent.double())) <= REL_TOL


def test_batch_items_are_independent(vae, batch_video, batch_latent):
    assert rel_err(vae.encode(batch_video[1:]), batch_latent[1:]) <= REL_TOL


def test_temporal_window_and_chunking_do_not_change_results(vae, batch_video, batch_latent, batch_decoded):
    """Official chunks (frame 0, then `temporal_window` frames) with window 4 and 16, and the whole clip as
    a single chunk, give the same latents; decoding all latent frames at once equals frame by frame."""
    vae16 = random_vae(temporal_window=16)  # chunks 1, 8 instead of 1, 4, 4
    assert rel_err(vae16.encode(batch_video), batch_latent) <= REL_TOL
    with torch.no_grad():
        whole = vae.conv1(vae.encoder(batch_video, FeatureCache()))[:, :16]
        assert rel_err(whole, vae.encode_mu(batch_video)) <= REL_TOL
        z = batch_latent / vae.latent_inv_std + vae.latent_mean
        assert rel_err(vae.decoder(vae.conv2(z), FeatureCache()), batch_decoded) <= REL_TOL


def test_encoder_is_causal(vae, batch_video, batch_latent):
    """Latent frame 0 depends on pixel frame 0 only; latent frame j on pixel frames 0..4j."""
    changed = batch_video.clone()
    changed[:, :, 5:] = random_video(2, 3, 4, 24, 40, seed=7)
    other = vae.encode(changed)
    assert torch.equal(other[:, :, :2], batch_latent[:, :, :2])
    assert not torch.allclose(other[:, :, 2], batch_latent[:, :, 2])
    changed[:, :, 1:] = random_video(2, 3, 8, 24, 40, seed=8)
    assert torch.equal(vae.encode(changed)[:, :, 0], batch_latent[:, :, 0])


def test_decoder_is_causal(vae, batch_latent, batch_decoded):
    """Decoding the first k latent frames gives exactly the first 1 + 4(k - 1) frames."""
    assert torch.equal(vae.decode(batch_latent[:, :, :1]), batch_decoded[:, :, :1])
    assert torch.equal(vae.decode(batch_latent[:, :, :2]), batch_decoded[:, :, :5])


def test_causal_conv3d_with_cache_equals_whole_sequence():
    """Chunk by chunk with the last two input frames as cache_x == one pass with two zero frames in front."""
    gen = torch.Generator().manual_seed(3)
    x, weight, bias = (torch.randn(s, generator=gen) for s in ((2, 5, 7, 6, 4), (3, 5, 3, 3, 3), (3,)))
    whole = ops.causal_conv3d(x, weight, bias, None, (2, 1, 1))
    first = ops.causal_conv3d(x[:, :, :1], weight, bias, None, (2, 1, 1))
    second = ops.causal_conv3d(x[:, :, 1:4], weight, bias, x[:, :, :1], (2, 1, 1))  # one cached frame + one zero frame
    third = ops.causal_conv3d(x[:, :, 4:], weight, bias, x[:, :, 2:4], (2, 1, 1))
    assert torch.allclose(torch.cat([first, second, third], dim=2), whole, atol=1e-6)
    strided = ops.causal_conv3d(x, weight, None, None, (0, 1, 1), (2, 1, 1))
    assert strided.shape == (2, 3, 3, 6, 4)


def test_causal_conv3d_errors_name_the_argument():
    x, weight = torch.zeros(1, 4, 3, 5, 5), torch.zeros(2, 4, 3, 3, 3)
    with pytest.raises(ValueError, match="'x' must be"):
        ops.causal_conv3d(x[0], weight)
    with pytest.raises(ValueError, match="'weight' must be"):
        ops.causal_conv3d(x, torch.zeros(2, 3, 3, 3, 3))
    with pytest.raises(ValueError, match="'cache_x' holds 3 frames"):
        ops.causal_conv3d(x, weight, None, torch.zeros(1, 4, 3, 5, 5), (2, 1, 1))
    with pytest.raises(TypeError, match="'bias' is torch.float64"):
        ops.causal_conv3d(x, weight, torch.zeros(2, dtype=torch.float64), None, (2, 1, 1))
    with pytest.raises(ValueError, match="fewer than the temporal kernel"):
        ops.causal_conv3d(x[:, :, :1], weight, None, None, (0, 1, 1))


@pytest.mark.skipif(not cosmos_engine.build_info()["loaded"], reason="the compiled library _C is not built")
def test_kernel_path_keeps_channels_last_and_reference_path_does_not(vae):
    """With the compiled ops every conv and norm of encode and decode sees channels innermost in memory
    (NDHWC / NHWC; no layout change between the first conv and the last), and both return NCDHW; with
    force_backend("reference") the first conv sees today's NCDHW. Both agree to float rounding."""
    from cosmos_engine.models.wan_vae import CausalConv3d, RMSNorm

    seen: list[tuple[str, bool]] = []
    layers = [m for m in vae.modules() if isinstance(m, (CausalConv3d, RMSNorm, torch.nn.Conv2d))]
    hooks = [m.register_forward_pre_hook(
        lambda m, args: seen.append((type(m).__name__, args[0].shape[1] == 1 or args[0].stride(1) == 1)))
        for m in layers]
    video = random_video(2, 3, 5, 16, 24, seed=5)
    try:
        with ops.force_backend("cpu"):
            latent = vae.encode(video)
            decoded = vae.decode(latent)
        kernel_seen, seen[:] = list(seen), []
        with ops.force_backend("reference"):
            ref_latent = vae.encode(video)
            ref_decoded = vae.decode(ref_latent)
    finally:
        for h in hooks:
            h.remove()
    assert len(kernel_seen) > 100 and all(innermost for _, innermost in kernel_seen), \
        [name for name, innermost in kernel_seen if not innermost]
    # today's path: NCDHW from the first conv (later layers follow whatever layout PyTorch's ops pick)
    assert seen[0] == ("CausalConv3d", False)
    assert latent.is_contiguous() and decoded.is_contiguous()
    assert rel_err(latent, ref_latent) <= REL_TOL and rel_err(decoded, ref_decoded) <= REL_TOL


def test_cache_keeps_views_only_where_they_cost_no_memory():
    """_last_frames: a view of a chunk no longer than the kept frames, a copy of the kept frames of a
    longer chunk (not the whole chunk kept alive), the join of context and a short chunk."""
    from cosmos_engine.models.wan_vae import _last_frames

    x = torch.randn(1, 4, 6, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    short = x[:, :, :1]
    assert _last_frames(short, None, 2).data_ptr() == short.data_ptr()
    assert _last_frames(x[:, :, :2], None, 2).data_ptr() == x.data_ptr()
    kept = _last_frames(x, None, 2)
    assert torch.equal(kept, x[:, :, -2:]) and kept.untyped_storage().nbytes() == kept.numel() * 4
    joined = _last_frames(short, x[:, :, 3:5], 2)
    assert torch.equal(joined, torch.cat([x[:, :, 4:5], short], dim=2))


# ---- tiling ---------------------------------------------------------------------------------------------------

def test_tiled_equals_untiled(vae, caplog):
    """With the exact overlap (200 px for this structure) tiled and untiled agree to 1e-5 of max|output|;
    the frame is 400 px wide so 264-px tiles make three overlapping columns."""
    assert vae.exact_tile_overlap() == 200
    video = random_video(1, 3, 5, 16, 400, seed=4)
    with caplog.at_level(logging.WARNING):
        latent = vae.encode(video)
        tiled_latent = vae.encode(video, tiled=True, tile_size=264, tile_overlap=200)
        assert rel_err(tiled_latent, latent) <= REL_TOL
        tiled_video = vae.decode(latent, tiled=True, tile_size=264, tile_overlap=200)
        assert rel_err(tiled_video, vae.decode(latent)) <= REL_TOL
    assert "approximate" not in caplog.text


def test_tiling_arguments_are_checked(vae, caplog):
    video = random_video(1, 3, 1, 16, 32)
    with pytest.raises(ValueError, match="tile_size=100"):
        vae.encode(video, tiled=True, tile_size=100, tile_overlap=8)
    with pytest.raises(ValueError, match="tile_overlap=64"):
        vae.encode(video, tiled=True, tile_size=64, tile_overlap=64)
    with caplog.at_level(logging.WARNING):
        vae.encode(video, tiled=True, tile_size=16, tile_overlap=8)
    assert "approximate near tile seams" in caplog.text


# ---- checkpoints ------------------------------------------------------------------------------------------------

def test_loads_a_file_in_the_official_layout(vae, tmp_path):
    path = tmp_path / "tokenizer.pth"
    torch.save(vae.state_dict(), path)
    loaded = load_vae(path, VAEConfig(dim=4))
    video = random_video(1, 3, 5, 16, 16)
    assert torch.equal(loaded.encode(video), vae.encode(video))
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("damage, message", [
    ("missing", "1 missing: decoder.head.2.bias"),
    ("extra", "1 unexpected: decoder.head.3.weight"),
    ("shape", r"wrong shape: encoder.conv1.weight \(4, 3, 3, 3\) \(expected \(4, 3, 3, 3, 3\)\)"),
])
def test_a_wrong_file_names_the_bad_key(vae, tmp_path, damage, message):
    state = dict(vae.state_dict())
    if damage == "missing":
        del state["decoder.head.2.bias"]
    elif damage == "extra":
        state["decoder.head.3.weight"] = torch.zeros(1)
    else:
        state["encoder.conv1.weight"] = torch.zeros(4, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=message):
        load_vae(path, VAEConfig(dim=4))


def test_unreadable_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_vae(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_vae(tmp_path / "junk.pth")
    torch.save({"model": {"a": 1}}, tmp_path / "nested.pth")
    with pytest.raises(CheckpointError, match="plain state dict"):
        load_vae(tmp_path / "nested.pth")


# ---- input errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, message", [
    ((3, 5, 16, 16), r"'video' must be \[B, 3, T, H, W\], got shape \(3, 5, 16, 16\)"),
    ((1, 4, 5, 16, 16), r"got shape \(1, 4, 5, 16, 16\)"),
    ((1, 3, 8, 16, 16), r"has T=8 frames; the causal VAE needs 1 \+ 4k frames \(e.g. 5 or 9\)"),
    ((1, 3, 5, 20, 16), r"\(1, 3, 5, 20, 16\) has H=20, W=16; both must be positive multiples of 8"),
])
def test_bad_videos_are_rejected_with_their_shape(vae, shape, message):
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.zeros(shape))


def test_bad_latents_are_rejected_with_their_shape(vae):
    with pytest.raises(ValueError, match=r"'latent' must be \[B, 16, T', h, w\].*got shape \(1, 8, 2, 2, 2\)"):
        vae.decode(torch.zeros(1, 8, 2, 2, 2))
    with pytest.raises(TypeError, match="'video' must be a floating-point"):
        vae.encode(torch.zeros(1, 3, 1, 8, 8, dtype=torch.uint8))


def test_vae_dtype_rule_fp32_on_cpu_bf16_on_gpu():
    from cosmos_engine.config.schema import ModelConfig
    from cosmos_engine.data.encoders import build_vae
    from cosmos_engine.models.flavors import vae_dtype

    assert vae_dtype("auto", "cuda") == torch.bfloat16 and vae_dtype("auto", "cpu") == torch.float32
    assert vae_dtype("bfloat16", "cpu") == torch.bfloat16 and vae_dtype("float32", "cuda") == torch.float32
    # A bf16 DiT on the CPU still gets an fp32 VAE unless the recipe says otherwise.
    cpu = torch.device("cpu")
    assert build_vae(ModelConfig(flavor="tiny", dtype="bfloat16"), cpu).dtype == torch.float32
    assert build_vae(ModelConfig(flavor="tiny", vae_dtype="bfloat16"), cpu).dtype == torch.bfloat16


def test_encode_flops_is_what_the_flop_counter_counts_on_a_whole_encode():
    from torch.utils.flop_counter import FlopCounterMode

    from cosmos_engine.models.wan_vae import encode_flops

    config = VAEConfig(dim=4, temporal_window=8)
    vae = random_vae(dim=4, temporal_window=8)
    for frames, h, w in ((1, 16, 24), (13, 24, 40)):
        with ops.force_backend("reference"), FlopCounterMode(display=False) as counter:
            vae.encode(torch.randn(1, 3, frames, h, w))
        assert encode_flops(config, frames, h, w) == counter.get_total_flops() > 0
