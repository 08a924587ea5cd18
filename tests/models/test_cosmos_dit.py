"""The Video2World DiT against the official network (reference case A) and against itself in fp64.

Case A (`dit_forward_backward.pt`, the tiny flavor with seeded random weights) checks the fp32 forward,
the per-frame-timestep forward, every parameter gradient, the intermediates and the official bf16
forward. A second case that is not in shared/ (B=2, another grid, per-frame timesteps, a non-zero padding
mask, other weights) checks the kernel path against the reference path and the fp32 net against the
same net in float64, so that passing does not depend on fitting one file.
"""

from __future__ import annotations

import contextlib
import re

import pytest
import torch

from cosmos_engine import ops
from cosmos_engine.models.cosmos_dit import CosmosDiT, DiTConfig
from cosmos_engine.models.flavors import dit_config
from tests.conftest import REFERENCE_DIR, load_reference_case

CASE = "dit_forward_backward.pt"
STATE_DICT_LIST = REFERENCE_DIR.parent / "dit_2b_state_dict.txt"
NOT_FORWARD_ARGS = ("loss_weight_R", "timesteps_B_T_perframe")

# Relative errors (max |a - b| / max |b|). The official fp32 file differs from fp64 by 5.4e-7 (forward) and
# 2.6e-6 (worst gradient); the official bf16 forward differs from fp64 by 8.2e-3 (README of the tensors).
FWD_RTOL = 1e-5
GRAD_RTOL = 1e-4
BF16_RTOL = 1e-2


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert torch.isfinite(actual).all(), "non-finite values in the output"
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


@pytest.fixture(scope="module")
def case() -> dict:
    return load_reference_case(CASE)


def forward_inputs(case: dict) -> dict:
    return {k: v for k, v in case["inputs"].items() if k not in NOT_FORWARD_ARGS}


def official_net(case: dict, dtype: torch.dtype = torch.float32) -> CosmosDiT:
    net = CosmosDiT(DiTConfig(**case["config"]))
    net.load_state_dict(case["state_dict"], strict=True)
    return net.to(dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------------


def test_config_takes_official_names(case):
    config = DiTConfig(**case["config"])
    assert config == dit_config("tiny"), "the tiny flavor is the reference case's configuration"
    with pytest.raises(TypeError):
        DiTConfig(**case["config"], not_an_official_argument=1)
    with pytest.raises(ValueError, match="rope_enable_fps_modulation"):
        DiTConfig(**{**case["config"], "rope_enable_fps_modulation": True})


def test_2b_flavor_has_the_official_keys_and_shapes():
    if not STATE_DICT_LIST.exists():
        pytest.skip(f"{STATE_DICT_LIST} not found; key list not checked")
    official = []
    for line in STATE_DICT_LIST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split()
            official.append((key, [int(n) for n in re.findall(r"\d+", shape)]))
    with torch.device("meta"):
        net = CosmosDiT(dit_config("2b"))
    ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert ours == official
    assert len(ours) == 576
    assert sum(p.numel() for p in net.parameters()) == 2_059_174_912
    assert sum(1 for _ in net.buffers()) == 7


def test_patchify_is_channel_major():
    """Feature c*4 + m*2 + n of the 1x2x2 patch holds channel c at row offset m, column offset n."""
    net = CosmosDiT(dit_config("tiny"))
    c, m, n = torch.meshgrid(torch.arange(18), torch.arange(2), torch.arange(2), indexing="ij")
    code = (100 * c + 10 * m + n).float()                                     # [18, 2, 2]
    x = code[:, None, None, :, None, :].expand(18, 1, 3, 2, 5, 2).reshape(1, 18, 1, 6, 10)  # 3x5 patches
    patches = net.x_embedder.proj[0](x)                                       # [1, 1, 3, 5, 72]
    assert patches.shape == (1, 1, 3, 5, 72)
    assert torch.equal(patches[0, 0, 1, 2], code.flatten())


# ----------------------------------------------------------------------------------------------------------------------
# Case A: parity with the official network
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [None, "reference"])
def test_fp32_forward_matches_official(case, backend):
    net = official_net(case)
    with torch.no_grad(), (ops.force_backend(backend) if backend else contextlib.nullcontext()):
        out = net(**forward_inputs(case))
    assert out.shape == case["outputs"]["out_fp32"].shape and out.dtype == torch.float32
    assert rel_err(out, case["outputs"]["out_fp32"]) < FWD_RTOL


def test_forward_swallows_extra_keyword_arguments(case):
    net = official_net(case)
    with torch.no_grad():
        out = net(**case["inputs"], data_type="video", gt_frames=None, use_video_condition=True)
    assert rel_err(out, case["outputs"]["out_fp32"]) < FWD_RTOL


def test_per_frame_timesteps_match_official(case):
    net = official_net(case)
    inputs = {**forward_inputs(case), "timesteps_B_T": case["inputs"]["timesteps_B_T_perframe"]}
    with torch.no_grad():
        out = net(**inputs)
    assert rel_err(out, case["outputs"]["out_fp32_perframe_timesteps"]) < FWD_RTOL


def test_intermediates_match_official(case):
    """Where each stage agrees; a failure here says which stage of the forward is wrong."""
    net = official_net(case)
    expected = case["outputs"]["intermediates_fp32"]
    seen = {}

    def keep(name):
        return lambda _module, _args, out: seen.__setitem__(name, out)

    net.x_embedder.register_forward_hook(keep("x_embedder_out"))
    net.t_embedding_norm.register_forward_hook(keep("t_embedding_B_T_D"))
    net.crossattn_proj.register_forward_hook(keep("crossattn_emb_projected"))
    net.final_layer.register_forward_hook(keep("final_layer_out"))
    for i, block in enumerate(net.blocks):
        block.register_forward_hook(keep(f"block{i}_out"))
    with torch.no_grad():
        net(**forward_inputs(case))
    for name, ref in expected.items():
        if name.startswith("rope_emb"):
            continue
        assert rel_err(seen[name].reshape(ref.shape), ref) < FWD_RTOL, name

    batch, _, frames, height, width = case["inputs"]["x_B_C_T_H_W"].shape
    grid = (frames, height // 2, width // 2)
    for net_dtype, table in ((torch.float32, expected["rope_emb_L_1_1_D"]),
                             (torch.bfloat16, case["outputs"]["rope_emb_L_1_1_D_bf16_net"])):
        cos, sin = net.to(net_dtype).pos_embedder(*grid, torch.float32)
        angles = table.reshape(cos.shape)
        assert rel_err(cos, angles.cos()) < 1e-6 and rel_err(sin, angles.sin()) < 1e-6, net_dtype
    for name, ref in case["outputs"]["rope_buffers_bf16_net"].items():
        assert torch.equal(getattr(net.pos_embedder, name).float(), ref), name


def test_gradients_match_official(case):
    net = official_net(case)
    out = net(**forward_inputs(case))
    (out * case["inputs"]["loss_weight_R"]).sum().backward()
    reference = case["outputs"]["grads_fp32"]
    assert set(reference) == {name for name, _ in net.named_parameters()}
    errors = {name: rel_err(net.get_parameter(name).grad, grad) for name, grad in reference.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < GRAD_RTOL, f"{worst}: {errors[worst]:.2e}"


def test_bf16_forward_matches_official_bf16(case):
    """The official precision: net.to(bfloat16) with its buffers, inputs bf16, timesteps fp32.

    Our LayerNorm + modulation, q/k RMSNorm + RoPE and gated residual add are fused ops rounding once; the
    official rounds after the LayerNorm, after (1 + scale), after the RMSNorm, after each product and after
    each sum. That accounts for our distance to `out_bf16` (5.7e-3 of max|out|; 5.0e-3 with only the
    LayerNorm fused)."""
    net = official_net(case, torch.bfloat16)
    inputs = {k: v if k == "timesteps_B_T" else v.to(torch.bfloat16) for k, v in forward_inputs(case).items()}
    with torch.no_grad():
        out = net(**inputs)
    assert out.dtype == torch.float32
    assert rel_err(out, case["outputs"]["out_bf16"]) < BF16_RTOL


# ----------------------------------------------------------------------------------------------------------------------
# A second case, not in shared/: self-consistency
# ----------------------------------------------------------------------------------------------------------------------


def randomized_tiny_net(seed: int) -> CosmosDiT:
    """The tiny flavor with every parameter random (the official init would zero the AdaLN up projections)."""
    net = CosmosDiT(dit_config("tiny"))
    net.init_weights()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)
    return net


def second_case_inputs(seed: int) -> dict:
    """B=2, 3 latent frames of 12x20, per-frame timesteps, 9 text tokens, a non-zero padding mask."""
    gen = torch.Generator().manual_seed(seed)
    batch, frames, height, width = 2, 3, 12, 20
    mask = torch.zeros(batch, 1, frames, height, width)
    mask[0, :, :1] = 1
    mask[1, :, :2] = 1
    return {
        "x_B_C_T_H_W": torch.randn(batch, 16, frames, height, width, generator=gen),
        "timesteps_B_T": torch.tensor([[100.0, 731.5, 731.5], [0.1, 0.1, 998.0]]),
        "crossattn_emb": torch.randn(batch, 9, 96, generator=gen),
        "condition_video_input_mask_B_C_T_H_W": mask,
        "fps": torch.tensor([16.0, 24.0]),
        "padding_mask": (torch.rand(batch, 1, 8 * height, 8 * width, generator=gen) > 0.7).float(),
    }


def test_kernel_path_matches_reference_path():
    net = randomized_tiny_net(seed=1)
    inputs = second_case_inputs(seed=2)
    with torch.no_grad():
        out_kernel = net(**inputs)
        with ops.force_backend("reference"):
            out_reference = net(**inputs)
    assert out_kernel.shape == (2, 16, 3, 12, 20)
    assert rel_err(out_kernel, out_reference) < FWD_RTOL


def test_fp32_matches_fp64():
    """The fp32 net within the fp32-vs-fp64 distance the official files show, forward and gradients."""
    net32 = randomized_tiny_net(seed=3)
    net64 = randomized_tiny_net(seed=3).to(torch.float64)
    inputs = second_case_inputs(seed=4)
    weight = torch.randn(2, 16, 3, 12, 20, generator=torch.Generator().manual_seed(5))
    out32 = net32(**inputs)
    out64 = net64(**{k: v.double() for k, v in inputs.items()})
    assert out64.dtype == torch.float64
    assert rel_err(out32, out64) < FWD_RTOL
    (out32 * weight).sum().backward()
    (out64 * weight.double()).sum().backward()
    for (name, p32), p64 in zip(net32.named_parameters(), net64.parameters()):
        assert rel_err(p32.grad, p64.grad) < GRAD_RTOL, name


def test_image_data_type_zeroes_the_condition_mask():
    net = randomized_tiny_net(seed=6)
    inputs = second_case_inputs(seed=7)
    with torch.no_grad():
        image = net(**inputs, data_type="image")
        video_without_mask = net(**{**inputs, "condition_video_input_mask_B_C_T_H_W": None})
    assert torch.equal(image, video_without_mask)


@pytest.mark.parametrize("name, value, message", [
    ("x_B_C_T_H_W", torch.zeros(2, 17, 3, 12, 20), r"x_B_C_T_H_W must be \[B, 16, T, H, W\], got \(2, 17, 3, 12, 20\)"),
    ("x_B_C_T_H_W", torch.zeros(2, 16, 3, 11, 20), "multiples of 2"),
    ("timesteps_B_T", torch.zeros(2, 2), r"timesteps_B_T .* got \(2, 2\)"),
    ("crossattn_emb", torch.zeros(2, 9, 95), r"crossattn_emb must be \[B=2, N, 96\], got \(2, 9, 95\)"),
    ("condition_video_input_mask_B_C_T_H_W", torch.zeros(2, 1, 2, 12, 20), "condition_video_input_mask"),
    ("data_type", "audio", "data_type"),
])
def test_bad_inputs_name_the_argument(name, value, message):
    net = CosmosDiT(dit_config("tiny"))
    net.init_weights()
    with pytest.raises(ValueError, match=message):
        net(**{**second_case_inputs(seed=0), name: value})


def test_tiny_flavor_runs_from_random_init():
    """The official init (AdaLN-Zero) gives a finite output and gradients for every parameter."""
    net = CosmosDiT(dit_config("tiny"))
    net.init_weights()
    out = net(**second_case_inputs(seed=8))
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
