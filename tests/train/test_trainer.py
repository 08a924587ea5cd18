"""The post-training loop end to end on the tiny recipe: loss falls, resume is exact, kills lose nothing."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from cosmos_engine.cli import main as cli_main
from cosmos_engine.train.checkpoint import FAULT_ENV, complete_checkpoints
from tests.train.runs import CLI, RECIPE, env_for, final_weights, make_dataset, run_args

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny_synthetic"))


def test_unknown_recipe_key_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(RECIPE.read_text().replace("max_steps = 40", "max_step = 40"))
    result = subprocess.run([*CLI, "run", str(bad)], capture_output=True, text=True, timeout=120,
                            env=env_for(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(bad) in result.stderr and "train.max_step" in result.stderr


@pytest.mark.slow
def test_tiny_recipe_loss_falls_and_writes_the_official_layout(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGINAIRE_OUTPUT_ROOT", str(tmp_path))
    assert cli_main(run_args(dataset, "full", 40, 20)) == 0
    run = tmp_path / "cosmos_predict_v2p5" / "tiny" / "full"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 41))
    losses = [r["loss"] for r in records]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10, losses
    assert all(r["data_wait_s"] >= 0 and r["tflops_per_s"] > 0 and r["samples_per_s"] > 0 for r in records)
    assert (run / "recipe.toml").is_file()
    checkpoints = run / "checkpoints"
    assert [p.name for _, p in complete_checkpoints(checkpoints)] == ["iter_000000020", "iter_000000040"]
    assert (checkpoints / "latest_checkpoint.txt").read_text() == "iter_000000040\n"
    for part in ("model", "optim", "scheduler", "trainer"):
        assert (checkpoints / "iter_000000040" / part / ".metadata").is_file()
    weights = final_weights(tmp_path, "full", 40)
    assert any(k.startswith("net.blocks.") for k in weights) and any(k.startswith("net_ema.") for k in weights)
    assert weights["net_ema.x_embedder.proj.1.weight"].dtype == torch.float32


def _launch(dataset, root, name, steps, save_every, **env):
    return subprocess.Popen([*CLI, *run_args(dataset, name, steps, save_every)], env=env_for(root, **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_minus_9_anywhere_then_resume_gives_the_uninterrupted_weights(dataset, tmp_path):
    steps, save_every = 12, 3
    reference = _launch(dataset, tmp_path, "straight", steps, save_every)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    want = final_weights(tmp_path, "straight", steps)

    checkpoints = tmp_path / "cosmos_predict_v2p5" / "tiny" / "crashy" / "checkpoints"
    # 1. Killed inside a checkpoint save (model part written, folder not yet published).
    proc = _launch(dataset, tmp_path, "crashy", steps, save_every, **{FAULT_ENV: "kill_during_save:6"})
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert (checkpoints / "iter_000000006.tmp").is_dir()  # the half-written save is there...
    assert [p.name for _, p in complete_checkpoints(checkpoints)] == ["iter_000000003"]  # ...and never counted
    # 2. Killed at random moments while training or saving: as soon as the metrics show a chosen step
    #    done (the kill then lands in the next step or in that step's save), resumed each time.
    metrics = checkpoints.parent / "metrics.jsonl"
    for kill_after in sorted(random.Random(0).sample(range(4, steps), 3)):
        proc = _launch(dataset, tmp_path, "crashy", steps, save_every)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            steps_done = [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.exists() else []
            if steps_done and steps_done[-1] >= kill_after:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    # 3. Resume to the end.
    proc = _launch(dataset, tmp_path, "crashy", steps, save_every)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "taking over the lock left by pid" in stderr  # the killed run's lock file names it
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, steps + 1))
    got = final_weights(tmp_path, "crashy", steps)
    assert got.keys() == want.keys()
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{len(different)} tensors differ after kill + resume, e.g. {different[:3]}"


def poison_network_weights(model_dir: Path) -> None:
    """Rewrite a checkpoint's model part with NaN training weights (a run that has gone bad)."""
    import torch.distributed.checkpoint as dcp

    from cosmos_engine.dcp_io import load_dcp, read_metadata

    entries = read_metadata(model_dir).state_dict_metadata
    state = {k: torch.empty(md.size, dtype=md.properties.dtype) for k, md in entries.items()}
    load_dcp(state, model_dir)
    state = {k: v.fill_(float("nan")) if k.startswith("net.") and v.is_floating_point() else v for k, v in state.items()}
    shutil.rmtree(model_dir)
    dcp.save(state, checkpoint_id=model_dir, no_dist=True)


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    dataset = tmp_path / "data"
    assert cli_main(["prepare", "--synthetic", "1", "--out", str(dataset)]) == 0
    first = subprocess.run([*CLI, *run_args(dataset, "diverge", 2, 2)], capture_output=True, text=True, timeout=300,
                           env=env_for(tmp_path))
    assert first.returncode == 0, first.stderr
    checkpoints = tmp_path / "cosmos_predict_v2p5" / "tiny" / "diverge" / "checkpoints"
    poison_network_weights(checkpoints / "iter_000000002" / "model")
    result = subprocess.run([*CLI, *run_args(dataset, "diverge", 6, 2)], capture_output=True, text=True, timeout=300,
                            env=env_for(tmp_path))
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "the loss is nan at step 3" in line and "Traceback" not in result.stderr
    assert [p.name for _, p in complete_checkpoints(checkpoints)] == ["iter_000000002"]
    assert str(checkpoints / "iter_000000002") in line


def losses(root: Path, name: str) -> list[float]:
    path = root / "cosmos_predict_v2p5" / "tiny" / name / "metrics.jsonl"
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_ranks_fsdp_match_one_rank(tmp_path):
    """torchrun, gloo, FSDP2 over 2 ranks with batch 1 each == one process with batch 2, step by step. The two
    ranks start on an empty cache, so they also build it together."""
    dataset = make_dataset(tmp_path / "data")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "cosmos_engine.cli", *run_args(dataset, "two", 5, 5, "--set", "train.batch_size=1")],
                         capture_output=True, text=True, timeout=300, env=env_for(tmp_path))
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([*CLI, *run_args(dataset, "one", 5, 5, "--set", "train.batch_size=2")],
                         capture_output=True, text=True, timeout=300, env=env_for(tmp_path))
    assert one.returncode == 0, one.stderr
    single, sharded = losses(tmp_path, "one"), losses(tmp_path, "two")
    assert len(single) == len(sharded) == 5
    # Same samples, same draws, same init; only the reduction order of the sharded gradients differs.
    torch.testing.assert_close(torch.tensor(sharded), torch.tensor(single), rtol=1e-5, atol=0)
    # Adam divides each gradient by its own running RMS, so last-bit differences in a near-zero gradient can
    # move that weight by up to lr (5e-4 here) per step; 1e-4 over 5 steps is well inside that (seen: 9e-6).
    a, b = final_weights(tmp_path, "one", 5), final_weights(tmp_path, "two", 5)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-4, msg=key)


@pytest.mark.slow
def test_fp32_master_keeps_fp32_state_and_trains(dataset, tmp_path):
    args = run_args(dataset, "master", 3, 3, "--set", "train.precision=\"fp32-master\"")
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env_for(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(torch.isfinite(torch.tensor(losses(tmp_path, "master"))))
    weights = final_weights(tmp_path, "master", 3)
    assert weights["net.blocks.0.mlp.layer1.weight"].dtype == torch.float32


@pytest.mark.slow
def test_bf16_mode_keeps_bf16_weights_and_moments_and_an_fp32_ema(dataset, tmp_path):
    """The official pure-bf16 mode: parameters, gradients and AdamW moments in bf16; the EMA stays fp32."""
    args = run_args(dataset, "bf16", 3, 3, "--set", "train.precision=\"bf16\"", "--set", "model.dtype=\"bfloat16\"")
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env_for(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3/3" in result.stdout and "loss=" in result.stdout  # the progress bar goes to stdout
    assert all(torch.isfinite(torch.tensor(losses(tmp_path, "bf16"))))
    weights = final_weights(tmp_path, "bf16", 3)
    assert weights["net.blocks.0.mlp.layer1.weight"].dtype == torch.bfloat16
    assert weights["net_ema.blocks.0.mlp.layer1.weight"].dtype == torch.float32
    folder = tmp_path / "cosmos_predict_v2p5" / "tiny" / "bf16" / "checkpoints" / f"iter_{3:09d}" / "optim"
    dcp_to_torch_save(folder, tmp_path / "optim.pt")
    moments = {k: v for k, v in torch.load(tmp_path / "optim.pt", weights_only=True).items()
               if k.endswith(("exp_avg", "exp_avg_sq"))}
    assert moments and all(v.dtype == torch.bfloat16 for v in moments.values())


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["official net only", "net and a different EMA"])
def test_model_checkpoint_initialises_the_net_from_its_net_entries(dataset, tmp_path, layout):
    """`[model] checkpoint` = an official `.pt`: training starts from its `net.*` weights, as the official
    post-training does. With lr 0 one step leaves them as they are, and the EMA equals them (beta 0 first)."""
    from cosmos_engine.models.cosmos_dit import CosmosDiT
    from cosmos_engine.models.flavors import dit_config

    torch.manual_seed(7)
    net = CosmosDiT(dit_config("tiny"))
    net.init_weights()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # away from any init, so a random start could not match
    sd = {f"net.{k}": v.clone() for k, v in net.state_dict().items()}
    if layout == "net and a different EMA":
        sd.update({f"net_ema.{k}": torch.randn_like(v) if v.is_floating_point() else v
                   for k, v in net.state_dict().items()})
    path = tmp_path / "pretrained.pt"
    torch.save(sd, path)
    args = run_args(dataset, "init", 1, 1, "--set", f"model.checkpoint=\"{path}\"", "--set", "train.lr=0.0")
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env_for(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    weights = final_weights(tmp_path, "init", 1)
    for key, value in net.state_dict().items():
        if value.is_floating_point() and not key.endswith("_extra_state"):
            assert torch.equal(weights[f"net.{key}"], value), key
            assert torch.equal(weights[f"net_ema.{key}"], value), key


@pytest.mark.slow
def test_a_checkpoint_with_pickled_objects_needs_trust_checkpoint(dataset, tmp_path):
    """Old TransformerEngine `_extra_state` entries are pickled objects: `run` refuses them (exit 2, naming
    the flag) unless told to trust the file, then drops them and trains."""
    import io

    from cosmos_engine.models.cosmos_dit import CosmosDiT
    from cosmos_engine.models.flavors import dit_config

    net = CosmosDiT(dit_config("tiny"))
    net.init_weights()
    sd = {f"net.{k}": v for k, v in net.state_dict().items()}
    sd["net.t_embedding_norm._extra_state"] = io.BytesIO(b"te state")
    path = tmp_path / "pickled.pt"
    torch.save(sd, path)
    args = run_args(dataset, "trust", 1, 1, "--set", f"model.checkpoint=\"{path}\"")
    refused = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env_for(tmp_path))
    assert refused.returncode == 2 and "--trust-checkpoint" in refused.stderr and "pickled.pt" in refused.stderr
    trusted = subprocess.run([*CLI, *args, "--trust-checkpoint"], capture_output=True, text=True, timeout=300,
                             env=env_for(tmp_path))
    assert trusted.returncode == 0, trusted.stderr[-2000:]
