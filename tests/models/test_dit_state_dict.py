"""Loading DiT weights: official `.pt` layouts written here from the tiny flavor, and DCP folders
(the official tarball of reference case E, and a full tiny checkpoint saved here)."""

from __future__ import annotations

import io
import pickle
import tarfile

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter

from cosmos_engine.errors import CheckpointError
from cosmos_engine.models.cosmos_dit import CosmosDiT
from cosmos_engine.models.flavors import dit_config
from cosmos_engine.models.state_dict import build_dit, read_state_dict, strip_official_prefix
from tests.conftest import REFERENCE_DIR, PickleThatRunsCode, load_reference_case

TINY = dit_config("tiny")


def random_state(seed: int) -> dict[str, torch.Tensor]:
    net = CosmosDiT(TINY)
    net.init_weights()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net.state_dict()


def official_layout(net: dict, ema: dict) -> dict:
    """What the official trainer's `model.pt` holds: bf16 training weights, fp32 EMA, TE `_extra_state`s."""
    sd = {f"net.{k}": v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in net.items()}
    sd.update({f"net_ema.{k}": v for k, v in ema.items()})
    for prefix in ("net.", "net_ema."):
        sd[f"{prefix}blocks.0.self_attn.q_norm._extra_state"] = torch.empty(0, dtype=torch.uint8)
        sd[f"{prefix}t_embedding_norm._extra_state"] = torch.empty(0, dtype=torch.uint8)
    return sd


def assert_state_equal(model: CosmosDiT, expected: dict, dtype: torch.dtype) -> None:
    got = model.state_dict()
    assert list(got) == list(expected)
    for k, v in expected.items():
        want = v.to(dtype) if v.is_floating_point() else v
        assert got[k].dtype == want.dtype and torch.equal(got[k], want), k


@pytest.fixture(scope="module")
def states():
    return random_state(seed=0), random_state(seed=1)


def test_strip_official_prefix():
    sd = {"net.a": 1, "net.b._extra_state": 2, "net_ema.a": 3, "other": 4}
    assert strip_official_prefix(sd) == {"a": 1}
    assert strip_official_prefix(sd, "net_ema.") == {"a": 3}
    assert strip_official_prefix(sd, "") == {"net.a": 1, "net_ema.a": 3, "other": 4}


def test_official_model_pt_loads_ema_by_default(tmp_path, states):
    net, ema = states
    path = tmp_path / "model.pt"
    torch.save(official_layout(net, ema), path)
    assert_state_equal(build_dit(TINY, path), ema, torch.float32)
    bf16_net = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in net.items()}
    assert_state_equal(build_dit(TINY, path, weights="net"), bf16_net, torch.float32)


def test_converted_ema_file_loads_in_bf16(tmp_path, states):
    _, ema = states
    path = tmp_path / "model_ema_bf16.pt"
    torch.save({f"net.{k}": v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ema.items()}, path)
    model = build_dit(TINY, path, dtype=torch.bfloat16)
    assert_state_equal(model, ema, torch.bfloat16)
    assert model.accum_iteration.dtype == torch.int64


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("net_ema.blocks.1.mlp.layer2.weight"), r"1 missing: blocks\.1\.mlp\.layer2\.weight"),
    (lambda sd: sd.__setitem__("net_ema.blocks.2.mlp.layer1.weight", torch.zeros(1)), r"1 unexpected: blocks\.2\.mlp\.layer1\.weight"),
    (lambda sd: sd.__setitem__("net_ema.final_layer.linear.weight", torch.zeros(64, 255)),
     r"1 mis-shaped: final_layer\.linear\.weight \(file \[64, 255\], model \[64, 256\]\)"),
])
def test_bad_keys_are_named(tmp_path, states, edit, message):
    sd = official_layout(*states)
    edit(sd)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=message):
        build_dit(TINY, path)


def test_many_missing_keys_are_counted(tmp_path, states):
    path = tmp_path / "half.pt"
    torch.save({f"net.{k}": v for k, v in states[0].items() if "blocks.1." not in k}, path)
    with pytest.raises(CheckpointError, match=r"20 missing: blocks\.1\..*\(15 more\)"):
        build_dit(TINY, path)


def test_pickled_objects_need_trust(tmp_path, states):
    """Old TransformerEngine versions store `_extra_state` as a pickled BytesIO, which weights_only refuses."""
    sd = {f"net.{k}": v for k, v in states[1].items()}
    sd["net.t_embedding_norm._extra_state"] = io.BytesIO(b"te state")
    path = tmp_path / "pickled.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="trust"):
        build_dit(TINY, path)
    assert_state_equal(build_dit(TINY, path, trust_checkpoint=True), states[1], torch.float32)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        build_dit(TINY, tmp_path / "absent.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        build_dit(TINY, tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="without a DCP"):
        build_dit(TINY, tmp_path)


def test_official_dcp_tarball_reads(tmp_path):
    case = load_reference_case("dcp_to_pt.pt")
    tarball = REFERENCE_DIR / case["config"]["tarball"]
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path, filter="data")
    iteration = tmp_path / "iter_000000200"
    expected_ema = strip_official_prefix(case["outputs"]["model_ema_fp32.pt:tensors"])
    expected_net = strip_official_prefix(case["outputs"]["model.pt:tensors"])
    for folder in (iteration / "model", iteration):
        ema = read_state_dict(folder)
        net = read_state_dict(folder, weights="net")
        assert ema.keys() == expected_ema.keys() and net.keys() == expected_net.keys()
        for k in expected_ema:
            assert ema[k].dtype == expected_ema[k].dtype and torch.equal(ema[k], expected_ema[k]), k
            assert net[k].dtype == expected_net[k].dtype and torch.equal(net[k], expected_net[k]), k
    with pytest.raises(CheckpointError, match="missing"):
        build_dit(TINY, iteration)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_full_dcp_checkpoint_builds_the_model(tmp_path, states):
    net, ema = states
    folder = tmp_path / "iter_000000010" / "model"
    state = {k: v for k, v in official_layout(net, ema).items() if not k.endswith("_extra_state")}
    dcp.save(state, storage_writer=FileSystemWriter(folder), no_dist=True)
    assert_state_equal(build_dit(TINY, folder.parent), ema, torch.float32)
    model = build_dit(TINY, folder, weights="net", dtype=torch.bfloat16)
    assert_state_equal(model, {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in net.items()},
                       torch.bfloat16)

    state["net_ema.blocks.0.mlp.layer1.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad" / "model"
    dcp.save(state, storage_writer=FileSystemWriter(bad), no_dist=True)
    with pytest.raises(CheckpointError, match=r"mis-shaped: blocks\.0\.mlp\.layer1\.weight \(file \[3, 3\]"):
        build_dit(TINY, bad)


def test_random_init_without_checkpoint():
    model = build_dit(TINY, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert not any(t.is_meta for t in model.state_dict().values())
    assert torch.equal(model.pos_embedder.seq, torch.arange(128, dtype=torch.bfloat16))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_metadata_is_not_unpickled_freely(tmp_path, states, capsys):
    """A DCP `.metadata` is a pickle: building from it must refuse code in it unless the checkpoint is trusted."""
    net, ema = states
    folder = tmp_path / "iter_000000010" / "model"
    state = {k: v for k, v in official_layout(net, ema).items() if not k.endswith("_extra_state")}
    dcp.save(state, storage_writer=FileSystemWriter(folder), no_dist=True)
    (folder / ".metadata").write_bytes(pickle.dumps(PickleThatRunsCode()))
    for load in (lambda: build_dit(TINY, folder), lambda: read_state_dict(folder)):
        with pytest.raises(CheckpointError, match="refusing to unpickle builtins.print.*--trust-checkpoint"):
            load()
    assert "this must not run" not in capsys.readouterr().out


def test_check_finite_names_the_first_bad_tensor():
    from cosmos_engine.models.state_dict import check_finite

    model = build_dit(TINY)
    check_finite(model, "ok.pt")
    names = [name for name, _ in model.named_parameters()]
    with torch.no_grad():
        params = dict(model.named_parameters())
        params[names[3]].view(-1)[:2] = float("nan")
        params[names[5]].view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError) as info:
        check_finite(model, "bad.pt")
    assert str(info.value).startswith(f"bad.pt: DiT tensor '{names[3]}' holds 2 non-finite values (NaN/Inf) of "
                                      f"{params[names[3]].numel()}")

    clean = build_dit(TINY)
    clean.pos_embedder.seq[-1] = float("-inf")  # floating buffers count too; int64 counters are never non-finite
    with pytest.raises(CheckpointError, match="'pos_embedder.seq' holds 1 non-finite"):
        check_finite(clean, "bad.pt")
