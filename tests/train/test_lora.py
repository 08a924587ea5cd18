"""LoRA on the tiny DiT (models/lora.py, PEFT): adapters start as a no-op, train while the base stays bitwise
frozen, merge to the unmerged result, add up when several are applied, survive kill -9 bitwise, convert to a
PEFT folder that PEFT itself reads, and every mistake is one clear error."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cosmos_engine.cli import main as cli_main
from cosmos_engine.config.load import split_lora_spec
from cosmos_engine.config.schema import LoraConfig, ModelConfig, TrainConfig
from cosmos_engine.errors import CheckpointError, RecipeError
from cosmos_engine.models import lora
from cosmos_engine.models.flavors import dit_config
from cosmos_engine.models.state_dict import build_dit
from cosmos_engine.parallel.distributed import Distributed
from cosmos_engine.train import ema as ema_lib
from cosmos_engine.train import optim
from cosmos_engine.train import step as step_lib
from cosmos_engine.train.checkpoint import FAULT_ENV, complete_checkpoints
from cosmos_engine.train.trainer import build_model

from tests.train.lora_fsdp_worker import LORA, lora_model, lora_steps
from tests.train.runs import (
    CLI,
    REPO,
    env_for,
    final_weights,
    make_dataset,
    run_args,
    run_folder,
)

TINY = dit_config("tiny")
RECIPE = REPO / "recipes" / "tiny_lora.toml"
WORKER = Path(__file__).with_name("lora_fsdp_worker.py")
# fp32 nets; merging changes the order of the adapter's sum (W x + s B A x vs (W + s B A) x): a few ulps of
# the O(1) outputs, far below the adapters' effect (> 1e-2, see test_training_moves_the_output_...).
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from a second thread on the shared 2-core machine (see tests/infer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_dit(seed: int = 0) -> torch.nn.Module:
    """A tiny DiT with every weight moved away from the official init (which zeroes the AdaLN up-projections)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_dit(TINY)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return net


def dit_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2, 1, 3, 8, 8)
    mask[:, :, 0] = 1.0
    return {"x_B_C_T_H_W": torch.randn(2, 16, 3, 8, 8, generator=gen), "timesteps_B_T": torch.rand(2, 1, generator=gen) * 1000,
            "crossattn_emb": torch.randn(2, 8, 96, generator=gen), "condition_video_input_mask_B_C_T_H_W": mask}


@torch.no_grad()
def output(net: torch.nn.Module) -> torch.Tensor:
    out = net(**dit_inputs())
    assert torch.isfinite(out).all()
    return out


def randomize_adapters(net: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if lora.is_adapter_key(name):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def plain_copy(net: torch.nn.Module) -> torch.nn.Module:
    copy = build_dit(TINY)
    copy.load_state_dict(net.state_dict())
    return copy


# ----------------------------------------------------------------------------------------------------------------------
# Injection and training
# ----------------------------------------------------------------------------------------------------------------------


def test_injected_adapters_start_as_a_no_op_and_are_all_that_trains():
    net = random_dit()
    base = output(net)
    lora.inject_lora(net, LORA)
    trainable = {name: p for name, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(lora.is_adapter_key(name) and p.dtype == torch.float32 for name, p in trainable.items())
    # 10 layers per block (q, k, v, output of both attentions, both MLP linears), r (in + out) each.
    assert len(trainable) == 2 * 10 * TINY.num_blocks
    # r (in + out) per layer: q, k, v, output 4 x 512 (self), 512 + 2 x 384 + 512 (cross), 768 + 768 (MLP).
    assert sum(p.numel() for p in trainable.values()) == lora.adapter_parameter_count(random_dit(), LORA) == \
        TINY.num_blocks * LORA.rank * 5376
    assert all(not p.any() for name, p in trainable.items() if ".lora_B." in name)  # up-projections start at 0
    assert all(p.abs().sum() > 0 for name, p in trainable.items() if ".lora_A." in name)
    assert torch.equal(output(net), base)


@pytest.mark.slow
def test_adapters_shard_with_fsdp2_and_two_ranks_match_one_process(tmp_path):
    """torchrun, gloo: the adapters (and their EMA) are FSDP2 shards, and 2 ranks with batch 1 each train what
    one process with batch 2 does (only the reduction order of the sharded gradients differs)."""
    out = tmp_path / "fsdp.pt"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(WORKER), str(out)], check=False, capture_output=True, text=True, timeout=300,
                            env=env_for(tmp_path, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    shards = got["shards"]
    assert shards["adapters_dtensor"] and shards["ema_dtensor"]
    assert shards["adapter_local"] * 2 == shards["adapter_total"] == TINY.num_blocks * LORA.rank * 5376
    assert all(math.isfinite(v) for v in got["bf16_losses"])
    model = lora_model(Distributed(0, 1, torch.device("cpu")))
    losses = lora_steps(model, Distributed(0, 1, torch.device("cpu")))
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(losses), rtol=1e-5, atol=0)
    want = model.state_dict()
    assert got["state"].keys() == want.keys()
    for key, value in want.items():  # Adam: a last-bit gradient difference moves a weight by up to lr (see test_trainer)
        torch.testing.assert_close(got["state"][key], value, rtol=1e-4, atol=1e-4, msg=key)


def test_a_bf16_base_keeps_fp32_adapters():
    net = random_dit().to(torch.bfloat16)
    lora.inject_lora(net, LORA)
    prefix = "blocks.0.self_attn.q_proj."
    dtypes = {name[len(prefix):].split(".")[0]: p.dtype for name, p in net.named_parameters() if name.startswith(prefix)}
    assert dtypes == {"base_layer": torch.bfloat16, "lora_A": torch.float32, "lora_B": torch.float32}
    assert net(**dit_inputs()).dtype == torch.float32 and torch.isfinite(net(**dit_inputs())).all()


def test_training_moves_the_output_and_leaves_every_base_tensor_bitwise_unchanged(tmp_path):
    """A few real optimizer steps of the trainer's parts (build_model, forward_loss, clip, AdamW, EMA)."""
    start = random_dit()
    checkpoint = tmp_path / "base.pt"
    torch.save({"net." + k: v for k, v in start.state_dict().items()}, checkpoint)
    model_cfg = ModelConfig(flavor="tiny", dtype="float32", activation_checkpointing="none", checkpoint=str(checkpoint))
    train_cfg = TrainConfig(precision="fp32", lr=1e-2, warmup_steps=0, grad_clip=1.0)
    model = build_model(model_cfg, train_cfg, Distributed(0, 1, torch.device("cpu")), seed=0, lora_cfg=LORA)
    assert torch.equal(output(model.net), output(start))  # step 0: exactly the base
    assert [n for n, _ in model.net_ema.named_parameters()] == [n for n, p in model.net.named_parameters()
                                                               if p.requires_grad]
    opt = optim.build_optimizer(model.net.parameters(), lr=train_cfg.lr, betas=train_cfg.betas, eps=train_cfg.eps,
                                weight_decay=train_cfg.weight_decay)
    optimized = sum(p.numel() for group in opt.param_groups for p in group["params"])
    assert optimized == sum(p.numel() for p in model.net_ema.parameters()) == TINY.num_blocks * LORA.rank * 5376
    gen = torch.Generator().manual_seed(3)
    x0, text = torch.randn(2, 16, 3, 8, 8, generator=gen), torch.randn(2, 8, 96, generator=gen)
    for iteration in range(4):
        draws = step_lib.draw_for_samples(0, iteration, [0, 1], x0.shape, 0.0)
        loss, _ = step_lib.forward_loss(model.net, x0, text, draws)
        assert torch.isfinite(loss)
        loss.backward()
        optim.clip_grad_norm(list(model.net.parameters()), train_cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_lib.update_ema(model.net_ema, model.net, ema_lib.ema_beta(iteration))
    trained = model.net.state_dict()
    for key, value in start.state_dict().items():
        injected = key.replace(".weight", ".base_layer.weight") if key not in trained else key
        assert torch.equal(trained[injected], value), key
    change = (output(model.net) - output(start)).norm() / output(start).norm()
    assert change > 1e-2, change  # measured about 0.06
    ema = dict(model.net_ema.named_parameters())
    assert all(not torch.equal(ema[n], p) for n, p in model.net.named_parameters() if ".lora_B." in n)


# ----------------------------------------------------------------------------------------------------------------------
# Merging and several adapters
# ----------------------------------------------------------------------------------------------------------------------


def test_merged_weights_give_the_unmerged_output():
    net = random_dit()
    lora.inject_lora(net, LORA)
    randomize_adapters(net, 5)
    merged = lora.merge_injected(net.state_dict(), LORA, "test")
    assert not lora.is_injected(list(merged))
    plain = build_dit(TINY)
    plain.load_state_dict(merged)
    unmerged = output(net)
    torch.testing.assert_close(output(plain), unmerged, **TOL)
    assert (unmerged - output(random_dit())).abs().max() > 1e-2  # the adapters matter


def make_adapter(folder, rank: int, alpha: float, seed: int):
    """A PEFT folder of random adapters on the official targets; returns (folder, {module: (A, B)})."""
    gen = torch.Generator().manual_seed(seed)
    cfg = LoraConfig(enabled=True, rank=rank, alpha=alpha)
    layers = dict(random_dit().named_modules())
    pairs = {name: (torch.randn(rank, layers[name].in_features, generator=gen) * 0.1,
                    torch.randn(layers[name].out_features, rank, generator=gen) * 0.1)
             for name in lora.check_targets(TINY, cfg)}
    state = {f"{m}.lora_{part}.weight": t for m, (a, b) in pairs.items() for part, t in (("A", a), ("B", b))}
    lora.write_adapter(folder, lora.config_json(cfg), state)
    return folder, pairs


def test_two_adapters_at_scales_1_and_half_equal_the_explicitly_summed_deltas(tmp_path):
    first, pairs1 = make_adapter(tmp_path / "a", rank=4, alpha=8.0, seed=1)
    second, pairs2 = make_adapter(tmp_path / "b", rank=8, alpha=4.0, seed=2)
    net = lora.apply_adapters(random_dit(), [(first, 1.0), (second, 0.5)])
    assert not any(p.requires_grad for p in net.parameters())
    explicit = random_dit()
    with torch.no_grad():
        layers = dict(explicit.named_modules())
        for module, (a, b) in pairs1.items():
            layers[module].weight += 1.0 * (8.0 / 4) * (b @ a)
        for module, (a, b) in pairs2.items():
            layers[module].weight += 0.5 * (4.0 / 8) * (b @ a)
    torch.testing.assert_close(output(net), output(explicit), **TOL)


def test_an_adapter_folder_is_what_peft_itself_reads(tmp_path):
    import peft

    folder, _ = make_adapter(tmp_path / "a", rank=4, alpha=8.0, seed=1)
    ours = output(lora.apply_adapters(random_dit(), [(folder, 1.0)]))
    theirs = peft.PeftModel.from_pretrained(random_dit(), str(folder))
    torch.testing.assert_close(output(theirs), ours, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------------
# The official PEFT-injected layout
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["net.*", "net.* and net_ema.*"])
def test_an_official_lora_checkpoint_loads_merged(tmp_path, layout):
    """The official LoRA run's files: PEFT-injected keys under net.* (and the EMA net under net_ema.*),
    with the official rank 32 and alpha 32 (the loader's defaults: the files do not record alpha)."""
    official = LoraConfig(enabled=True)
    net = random_dit()
    lora.inject_lora(net, official)
    randomize_adapters(net, 7)
    sd = {"net." + k: v for k, v in net.state_dict().items()}
    assert "net.blocks.0.self_attn.q_proj.base_layer.weight" in sd
    assert "net.blocks.0.self_attn.q_proj.lora_A.default.weight" in sd
    if layout == "net.* and net_ema.*":  # the EMA net is the one to sample with
        ema = random_dit(1)
        lora.inject_lora(ema, official)
        randomize_adapters(ema, 8)
        sd.update({"net_ema." + k: v for k, v in ema.state_dict().items()})
        net = ema
    path = tmp_path / "official.pt"
    torch.save(sd, path)
    torch.testing.assert_close(output(build_dit(TINY, path)), output(net), **TOL)
    with pytest.raises(CheckpointError, match="rank 32, but lora.rank = 16; set lora.rank and lora.alpha"):
        build_dit(TINY, path, lora=LoraConfig(rank=16))


def test_an_official_lora_dcp_checkpoint_converts_without_an_adapter_config(tmp_path):
    """The official trainer's LoRA checkpoint: injected keys, a whole EMA net under net_ema.*, and no
    adapter_config.json beside it (the official values are taken): converted merged, the EMA file samples
    as the EMA net does; converted unmerged, it keeps the injected layout and loads the same."""
    import torch.distributed.checkpoint as dcp

    from cosmos_engine.convert import convert_checkpoint

    official = LoraConfig(enabled=True)
    net, ema = random_dit(), random_dit(1)
    for seed, model in ((7, net), (8, ema)):
        lora.inject_lora(model, official)
        randomize_adapters(model, seed)
    state = {**{"net." + k: v for k, v in net.state_dict().items()},
             **{"net_ema." + k: v for k, v in ema.state_dict().items()}}
    model_dir = tmp_path / "iter_000000010" / "model"
    dcp.save(state, checkpoint_id=str(model_dir))
    for merge in (True, False):
        out = tmp_path / f"merged_{merge}"
        written = convert_checkpoint(model_dir, out, merge_lora=merge)
        assert (out / "lora_adapter" / "adapter_config.json").is_file()
        ema_file = next(p for p in written if p.name == "model_ema_fp32.pt")
        keys = torch.load(ema_file, weights_only=True, mmap=True).keys()
        assert any("lora_A" in k for k in keys) != merge
        torch.testing.assert_close(output(build_dit(TINY, ema_file)), output(ema), **TOL)


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cfg", "message"), [
    (LoraConfig(target_modules=("q_proj", "qproj")),
     r"lora.target_modules: 'qproj' names no layer of the DiT; adaptable layers: .*mlp.layer1.*q_proj"),
    (LoraConfig(target_modules=("linear_1",)),
     r"'linear_1' selects t_embedder.1.linear_1, which cannot carry an adapter .*fp32 islands"),
    (LoraConfig(rank=129),
     r"lora.rank = 129 is invalid: larger than the layer blocks.0.cross_attn.k_proj \(256 x 128\); expected at most 128"),
])
def test_a_bad_lora_table_is_one_clear_error(cfg, message):
    with pytest.raises(RecipeError, match=message):
        lora.inject_lora(random_dit(), cfg)


def test_an_adapter_for_another_architecture_is_one_clear_error(tmp_path):
    other = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64),
             "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4)}
    lora.write_adapter(tmp_path / "llm", lora.config_json(LoraConfig(rank=4)), {k.removeprefix("base_model.model."): v
                                                                                for k, v in other.items()})
    with pytest.raises(CheckpointError, match=r"llm: the LoRA adapter does not fit this DiT \(another architecture "
                                              r"or size\?\): 1 unknown layers: model.layers.0.self_attn.q_proj"):
        lora.apply_adapters(random_dit(), [(tmp_path / "llm", 1.0)])
    wide = {"blocks.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 2048),
            "blocks.0.self_attn.q_proj.lora_B.weight": torch.zeros(2048, 4)}  # the 2B's width on the tiny net
    lora.write_adapter(tmp_path / "2b", lora.config_json(LoraConfig(rank=4)), wide)
    with pytest.raises(CheckpointError, match=r"1 mis-shaped layers: blocks.0.self_attn.q_proj \(adapter 2048 x 2048, "
                                              r"layer 256 x 256\)"):
        lora.apply_adapters(random_dit(), [(tmp_path / "2b", 1.0)])


def test_an_adapter_with_diffusers_key_names_acts_as_the_same_adapter_with_official_names(tmp_path):
    from cosmos_engine.models.diffusers_format import diffusers_key

    gen = torch.Generator().manual_seed(3)
    official = {f"blocks.{b}.{m}.lora_{p}.weight": torch.randn(shape, generator=gen) * 0.05
                for b in (0, 1) for m in ("self_attn.q_proj", "mlp.layer2")
                for p, shape in (("A", (4, 256 if m != "mlp.layer2" else 512)), ("B", (256, 4)))}
    lora.write_adapter(tmp_path / "official", lora.config_json(LoraConfig(rank=4)), official)
    # As the diffusers recipe saves it: diffusers module names under PEFT's `transformer.` prefix.
    renamed = {"transformer." + diffusers_key(k): v for k, v in official.items()}
    assert "transformer.transformer_blocks.1.ff.net.2.lora_B.weight" in renamed
    lora.write_adapter(tmp_path / "diffusers", lora.config_json(LoraConfig(rank=4)), renamed)
    outs = [output(lora.apply_adapters(random_dit(), [(tmp_path / folder, 1.0)])) for folder in ("official", "diffusers")]
    base = output(random_dit())
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], base)
    bad = {"transformer.transformer_blocks.0.attn9.to_q.lora_A.weight": torch.zeros(4, 256)}
    lora.write_adapter(tmp_path / "bad", lora.config_json(LoraConfig(rank=4)), bad)
    with pytest.raises(CheckpointError, match="unknown diffusers DiT key 'transformer_blocks.0.attn9.to_q"):
        lora.apply_adapters(random_dit(), [(tmp_path / "bad", 1.0)])


def test_the_nemo_lora_recipe_is_the_official_lora_experiment_on_the_full_recipe():
    import dataclasses

    from cosmos_engine.config import load_recipe
    from cosmos_engine.config.schema import OFFICIAL_LORA_TARGETS

    lora_recipe = load_recipe(REPO / "recipes" / "nemo_lora.toml")
    full = load_recipe(REPO / "recipes" / "nemo_posttrain.toml")
    assert lora_recipe.lora == LoraConfig(enabled=True, rank=32, alpha=32.0, dropout=0.0,
                                          target_modules=OFFICIAL_LORA_TARGETS)
    assert (lora_recipe.job.group, lora_recipe.job.name) == ("lora", "2b_cosmos_nemo_assets_lora")
    assert lora_recipe.train.conditional_frames_probs == (0.333, 0.333, 0.334)
    same_train = dataclasses.replace(lora_recipe.train, conditional_frames_probs=full.train.conditional_frames_probs)
    assert (lora_recipe.model, lora_recipe.data, same_train, lora_recipe.checkpoint) == \
        (full.model, full.data, full.train, full.checkpoint)


def test_adapter_specs_split_path_and_scale():
    assert split_lora_spec("runs/a/lora_adapter", "x") == ("runs/a/lora_adapter", 1.0)
    assert split_lora_spec("runs/a:0.5", "x") == ("runs/a", 0.5)
    assert split_lora_spec("C:/odd:name", "x") == ("C:/odd:name", 1.0)  # a ':' part that is no number is the path's
    with pytest.raises(RecipeError, match=r"--lora a:nan: LoRA adapter 'a:nan' is invalid"):
        split_lora_spec("a:nan", "--lora a:nan")


# ----------------------------------------------------------------------------------------------------------------------
# The run: kill -9 and resume, convert, infer
# ----------------------------------------------------------------------------------------------------------------------

STEPS, SAVE_EVERY = 4, 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny_synthetic"), clips=1)  # 2 windows to encode


@pytest.fixture(scope="module")
def lora_run(dataset, tmp_path_factory):
    """(output root, name) of an uninterrupted STEPS-step tiny LoRA run, trained in this process."""
    root = tmp_path_factory.mktemp("lora_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGINAIRE_OUTPUT_ROOT", str(root))
        assert cli_main(run_args(dataset, "straight", STEPS, SAVE_EVERY, recipe=RECIPE)) == 0
    return root, "straight"


def test_a_lora_checkpoint_holds_the_frozen_base_the_adapters_and_their_ema(lora_run):
    weights = final_weights(*lora_run, STEPS)
    ema = {k for k in weights if k.startswith("net_ema.")}
    assert ema and all(lora.is_adapter_key(k) and weights[k].dtype == torch.float32 for k in ema)
    assert "net.blocks.0.mlp.layer1.base_layer.weight" in weights and "net.blocks.0.mlp.layer1.lora_B.default.weight" in weights
    folder = run_folder(*lora_run) / "checkpoints" / f"iter_{STEPS:09d}"
    config = json.loads((folder / lora.CONFIG_FILE).read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 16, 16.0)


def test_the_plan_predicts_a_lora_checkpoint_on_disk(lora_run, dataset):
    from cosmos_engine.config import load_recipe
    from cosmos_engine.plan import make_plan

    recipe = load_recipe(RECIPE, [f"data.dataset_dir={dataset}"])
    plan = make_plan(recipe, "train", "h100-sxm")  # what lands on disk does not depend on the device
    predicted = next(line.bytes for line in plan.disk if line.name == "checkpoint (one)")
    folder = run_folder(*lora_run) / "checkpoints" / f"iter_{STEPS:09d}"
    on_disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert abs(predicted - on_disk) <= 0.02 * on_disk, (predicted, on_disk)


@pytest.mark.slow
def test_kill_minus_9_then_resume_of_a_lora_run_is_bitwise_uninterrupted(dataset, lora_run, monkeypatch):
    root, _ = lora_run
    checkpoints = run_folder(root, "crashy") / "checkpoints"
    # SIGKILL in the middle of the step-4 save (model part written, folder not published).
    killed = subprocess.run([*CLI, *run_args(dataset, "crashy", STEPS, SAVE_EVERY, recipe=RECIPE)], check=False,
                            capture_output=True, text=True, timeout=300,
                            env=env_for(root, **{FAULT_ENV: f"kill_during_save:{STEPS}"}))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.name for _, p in complete_checkpoints(checkpoints)] == [f"iter_{SAVE_EVERY:09d}"]
    monkeypatch.setenv("IMAGINAIRE_OUTPUT_ROOT", str(root))
    assert cli_main(run_args(dataset, "crashy", STEPS, SAVE_EVERY, recipe=RECIPE)) == 0
    got, want = final_weights(root, "crashy", STEPS), final_weights(*lora_run, STEPS)
    assert got.keys() == want.keys()
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{len(different)} tensors differ after kill + resume, e.g. {different[:3]}"


def test_a_wrong_target_stops_the_run_with_one_line_before_any_work(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMAGINAIRE_OUTPUT_ROOT", str(tmp_path))
    args = run_args(dataset, "typo", 1, 1, "--set", 'lora.target_modules=["q_proj", "mlp.layer3"]', recipe=RECIPE)
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cosmos-engine run: error: lora.target_modules: 'mlp.layer3' names no layer")
    assert not (run_folder(tmp_path, "typo") / "checkpoints").exists()


def test_convert_writes_the_official_lora_files_a_peft_folder_and_merged_files(lora_run, tmp_path):
    iteration = run_folder(*lora_run) / "checkpoints" / f"iter_{STEPS:09d}"
    assert cli_main(["convert", str(iteration), str(tmp_path / "injected")]) == 0
    assert cli_main(["convert", str(iteration), str(tmp_path / "merged"), "--merge-lora"]) == 0
    injected = torch.load(tmp_path / "injected" / "model_ema_fp32.pt", weights_only=True)
    assert "net.blocks.0.self_attn.q_proj.lora_A.default.weight" in injected
    assert all(v.dtype in (torch.float32, torch.int64) for v in injected.values())
    merged = torch.load(tmp_path / "merged" / "model_ema_fp32.pt", weights_only=True)
    assert not lora.is_injected(list(merged)) and "net.blocks.0.self_attn.q_proj.weight" in merged
    model_pt = torch.load(tmp_path / "injected" / "model.pt", weights_only=True)
    assert {k.split(".")[0] for k in model_pt} == {"net", "net_ema"}  # the whole EMA net, as the official
    # Sampled four ways, the EMA net is one net: the injected file (merged as it loads, with the rank 16 and
    # alpha 16 recorded beside it, not the official defaults), the merged file, the DCP checkpoint itself, and
    # the base with the adapter folder applied unmerged.
    reference = output(build_dit(TINY, tmp_path / "merged" / "model_ema_fp32.pt"))
    torch.testing.assert_close(output(build_dit(TINY, tmp_path / "injected" / "model_ema_fp32.pt")), reference, **TOL)
    torch.testing.assert_close(output(build_dit(TINY, iteration)), reference, **TOL)
    base = {k.removeprefix("net.").replace(".base_layer.", "."): v for k, v in injected.items()
            if not lora.is_adapter_key(k)}
    net = build_dit(TINY)
    net.load_state_dict(base)
    adapted = lora.apply_adapters(net, [(tmp_path / "injected" / "lora_adapter", 1.0)])
    torch.testing.assert_close(output(adapted), reference, **TOL)


def test_infer_applies_adapters_from_the_command_line(lora_run, tmp_path, capsys, caplog):
    """`infer --lora PATH[:SCALE]` (repeatable) for a TOML recipe and for a JSON sample file."""
    import logging

    iteration = run_folder(*lora_run) / "checkpoints" / f"iter_{STEPS:09d}"
    assert cli_main(["convert", str(iteration), str(tmp_path / "conv"), "--merge-lora"]) == 0
    adapter = tmp_path / "conv" / "lora_adapter"
    common = ["--checkpoint-path", str(tmp_path / "conv" / "model_ema_fp32.pt"), "--no-progress",
              "--lora", f"{adapter}:0.5", "--lora", str(adapter), "--set", "infer.num_steps=1",
              "--set", "infer.num_frames=5", "--set", f"infer.output_dir={tmp_path / 'out'}"]
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps({"inference_type": "text2world", "samples": {"s": {"prompt": "a robot"}}}))
    caplog.set_level(logging.INFO, logger="cosmos_engine")
    for source in (["infer", str(REPO / "recipes" / "tiny_infer.toml")],
                   ["infer", str(samples), "--recipe", str(REPO / "recipes" / "tiny_infer.toml")]):
        caplog.clear()
        assert cli_main([*source, *common]) == 0
        applied = [r.getMessage() for r in caplog.records if "LoRA adapter" in r.getMessage()]
        assert len(applied) == 2 and "scale 0.5 (unmerged)" in applied[0] and "scale 1 (unmerged)" in applied[1]
    assert (tmp_path / "out" / "tiny_robot.mp4").is_file() and (tmp_path / "out" / "s.mp4").is_file()
    missing = cli_main(["infer", str(REPO / "recipes" / "tiny_infer.toml"), *common, "--lora", str(tmp_path / "none")])
    assert missing == 2 and "no such LoRA adapter folder" in capsys.readouterr().err
