"""`cosmos-engine convert`: the official converter's three files from a DCP checkpoint, atomically."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from cosmos_engine import convert
from cosmos_engine.atomic import DiskFull
from cosmos_engine.cli import main
from cosmos_engine.errors import CheckpointError
from tests.conftest import REFERENCE_DIR, REPO_ROOT, PickleThatRunsCode, load_reference_case

OUTPUTS = ["model.pt", "model_ema_fp32.pt", "model_ema_bf16.pt"]


def save_dcp(state: dict, folder: Path) -> Path:
    """torch.distributed.checkpoint.save in this single process, without a process group."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=folder, no_dist=True)
    return folder


def trainer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """What the trainer's model/ folder holds: net.* in bf16, net_ema.* in fp32, an int64 buffer in both."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for prefix, dtype in (("net.", torch.bfloat16), ("net_ema.", torch.float32)):
        state[prefix + "accum_iteration"] = torch.tensor(10 + seed)
        state[prefix + "blocks.0.mlp.layer1.weight"] = torch.randn(6, 4, generator=g).to(dtype)
        state[prefix + "final_layer.linear.weight"] = torch.randn(8, 6, generator=g).to(dtype)
    return state


def make_run(tmp_path: Path) -> Path:
    """A run folder with two checkpoints; latest_checkpoint.txt names the second."""
    run = tmp_path / "run"
    for iteration in (5, 10):
        save_dcp(trainer_state(seed=iteration), run / "checkpoints" / f"iter_{iteration:09d}" / "model")
    (run / "checkpoints" / "latest_checkpoint.txt").write_text("iter_000000010\n")
    return run


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def stray_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------- official parity


def test_case_e_official_conversion(tmp_path):
    case = load_reference_case("dcp_to_pt.pt")
    with tarfile.open(REFERENCE_DIR / case["config"]["tarball"]) as tar:
        tar.extractall(tmp_path, filter="data")
    iteration = tmp_path / "iter_000000200"

    written = convert.convert_checkpoint(iteration)

    assert written == [iteration / name for name in OUTPUTS]
    assert stray_files(iteration) == []
    for name in OUTPUTS:
        got, listing, tensors = load(iteration / name), case["outputs"][name], case["outputs"][f"{name}:tensors"]
        assert list(got) == list(listing)  # same keys, same order
        for key, spec in listing.items():
            assert str(got[key].dtype) == spec["dtype"] and list(got[key].shape) == spec["shape"], key
            assert torch.equal(got[key], tensors[key]), key


# --------------------------------------------------------------------------------- our own round trip, folders


def test_round_trip_from_a_run_folder(tmp_path):
    run = make_run(tmp_path)
    latest = run / "checkpoints" / "iter_000000010"
    saved = trainer_state(seed=10)

    written = convert.convert_checkpoint(run)  # default: the latest checkpoint, files beside its model/

    assert written == [latest / name for name in OUTPUTS]
    model = load(latest / "model.pt")
    assert list(model) == list(saved)
    assert all(model[k].dtype == v.dtype and torch.equal(model[k], v) for k, v in saved.items())
    ema_fp32, ema_bf16 = load(latest / "model_ema_fp32.pt"), load(latest / "model_ema_bf16.pt")
    assert list(ema_fp32) == list(ema_bf16) == ["net.accum_iteration", "net.blocks.0.mlp.layer1.weight",
                                                "net.final_layer.linear.weight"]
    for key in ema_fp32:
        original = saved[key.replace("net.", "net_ema.", 1)]
        assert ema_fp32[key].dtype == original.dtype and torch.equal(ema_fp32[key], original)
        assert torch.equal(ema_bf16[key], original.to(torch.bfloat16) if original.is_floating_point() else original)
    assert ema_bf16["net.accum_iteration"].dtype == torch.int64
    assert not list((run / "checkpoints" / "iter_000000005").glob("*.pt"))


@pytest.mark.parametrize("given", ["", "checkpoints", "checkpoints/iter_000000010", "checkpoints/iter_000000010/model"])
def test_every_folder_level_names_the_same_checkpoint(tmp_path, given):
    run = make_run(tmp_path)
    assert convert.find_model_dir(run / given) == run / "checkpoints" / "iter_000000010" / "model"


def test_explicit_output_folder(tmp_path):
    run = make_run(tmp_path)
    out = tmp_path / "exported" / "step10"
    assert main(["convert", str(run / "checkpoints" / "iter_000000010" / "model"), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS + [name + ".sha256" for name in OUTPUTS])


def test_no_ema(tmp_path):
    model_dir = save_dcp({k: v for k, v in trainer_state().items() if k.startswith("net.")}, tmp_path / "it" / "model")
    with pytest.raises(CheckpointError, match="no 'net_ema.\\*' keys.*--no-ema"):
        convert.convert_checkpoint(model_dir)
    assert not list((tmp_path / "it").glob("*.pt"))
    (tmp_path / "it" / "model_ema_bf16.pt").write_bytes(b"stale")
    assert convert.convert_checkpoint(model_dir, ema=False) == [tmp_path / "it" / "model.pt"]
    assert sorted(p.name for p in (tmp_path / "it").glob("*.pt")) == ["model.pt"]


# ------------------------------------------------------------------------------------------------- atomicity


def test_an_existing_file_is_replaced_only_by_a_complete_one(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    iteration = run / "checkpoints" / "iter_000000010"
    for name in OUTPUTS:
        (iteration / name).write_bytes(b"previous")
    real_save, calls = torch.save, []

    def save_then_fail_on_the_third_file(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            Path(f).write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fail_on_the_third_file)
    with pytest.raises(DiskFull, match="no space left on device while writing .*model_ema_bf16.pt$"):
        convert.convert_checkpoint(iteration)
    assert (iteration / "model_ema_bf16.pt").read_bytes() == b"previous"
    assert "net_ema.accum_iteration" in load(iteration / "model.pt")
    assert stray_files(iteration) == []

    monkeypatch.setattr(torch, "save", real_save)
    convert.convert_checkpoint(iteration)
    assert load(iteration / "model_ema_bf16.pt")["net.final_layer.linear.weight"].dtype == torch.bfloat16
    assert stray_files(iteration) == []


# ---------------------------------------------------------------------------------------------------- errors


def bad_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (folder, text the error must contain)."""
    no_metadata = tmp_path / "iter_000000001" / "model"
    no_metadata.mkdir(parents=True)
    (no_metadata / "__0_0.distcp").write_bytes(b"")
    optim = save_dcp({"state.net.w.exp_avg": torch.zeros(2), "param_groups.net.w.lr": torch.tensor(1e-4)},
                     tmp_path / "iter_000000002" / "optim")
    return {
        "missing": (tmp_path / "nowhere", "no such checkpoint folder"),
        "without .metadata": (no_metadata.parent, "no .metadata file"),
        "empty folder": (tmp_path, "not a DCP checkpoint"),
        "wrong keys": (optim, "'state.net.w.exp_avg'"),
    }


def test_errors_name_the_folder(tmp_path):
    for what, (folder, text) in bad_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            convert.convert_checkpoint(folder)
        assert text in str(info.value) and str(folder) in str(info.value), (what, str(info.value))


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    for what, (folder, text) in bad_checkpoints(tmp_path).items():
        assert main(["convert", str(folder)]) == 2, what
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cosmos-engine convert: error: ") and text in lines[0], lines


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfeiter_000000010\n", "not UTF-8 text (byte 0); expected one line naming a checkpoint folder"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text (byte 0)"),
    (b"\x00\x01\x02\x7f junk", r"got '\x00\x01\x02\x7f junk'"),
    (b"", "got an empty file"),
    (b"\n\n", "got an empty file"),
    (b"final\n", "such as iter_000000200, got 'final'"),
    (b"iter_10\n", "got 'iter_10'"),
    (b"../iter_000000010\n", "got '../iter_000000010'"),
    (b"iter_000000010\niter_000000005\n", "got 'iter_000000010\\niter_000000005'"),
    (b"iter_000000400\n", "names 'iter_000000400', but"),
])
def test_garbage_in_latest_checkpoint_txt_is_one_line(tmp_path, capsys, content, message):
    run = make_run(tmp_path)
    latest = run / "checkpoints" / "latest_checkpoint.txt"
    latest.write_bytes(content)
    assert main(["convert", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {latest}: " in err and message in err, err


# --------------------------------------------------------------------------------------- untrusted pickles


def test_pickled_objects_need_trust(tmp_path):
    state = {**trainer_state(), "net.blocks.0.layer._extra_state": io.BytesIO(b"te")}
    model_dir = save_dcp(state, tmp_path / "it" / "model")
    with pytest.raises(CheckpointError, match="'net.blocks.0.layer._extra_state'.*--trust-checkpoint"):
        convert.convert_checkpoint(model_dir)
    convert.convert_checkpoint(model_dir, trust_checkpoint=True)
    model = torch.load(tmp_path / "it" / "model.pt", weights_only=False)
    assert model["net.blocks.0.layer._extra_state"].getvalue() == b"te"

    (model_dir / ".metadata").write_bytes(pickle.dumps(PickleThatRunsCode()))
    with pytest.raises(CheckpointError, match="refusing to unpickle builtins.print"):
        convert.convert_checkpoint(model_dir)


def test_converted_files_give_the_same_dit_outputs(tmp_path):
    """A DCP checkpoint of a tiny DiT (net + a different EMA) -> convert -> build_dit from each file: the
    outputs equal those of the network that was saved (bf16 file: within bf16 rounding)."""
    from cosmos_engine.models.flavors import dit_config
    from cosmos_engine.models.state_dict import build_dit
    from cosmos_engine.train.checkpoint import CheckpointManager

    torch.manual_seed(0)
    cfg = dit_config("tiny")
    net, ema = build_dit(cfg), build_dit(cfg)
    parts = {"model": {**{f"net.{k}": v for k, v in net.state_dict().items()},
                       **{f"net_ema.{k}": v for k, v in ema.state_dict().items()}},
             "optim": {}, "scheduler": {"last_epoch": 1}, "trainer": {"iteration": 1}}
    folder = CheckpointManager(tmp_path / "checkpoints", keep_last=1).save(1, parts)
    convert.convert_checkpoint(folder)

    gen = torch.Generator().manual_seed(1)
    inputs = dict(x_B_C_T_H_W=torch.randn(1, 16, 2, 8, 8, generator=gen), timesteps_B_T=torch.tensor([[500.0]]),
                  crossattn_emb=torch.randn(1, 12, cfg.crossattn_proj_in_channels, generator=gen))
    with torch.no_grad():
        want_net, want_ema = net(**inputs), ema(**inputs)
        assert not torch.allclose(want_net, want_ema)
        for file, weights, want in (("model.pt", "net", want_net), ("model.pt", "ema", want_ema),
                                    ("model_ema_fp32.pt", "ema", want_ema)):
            got = build_dit(cfg, folder / file, weights=weights)(**inputs)
            assert torch.equal(got, want), (file, weights)
        bf16 = build_dit(cfg, folder / "model_ema_bf16.pt", dtype=torch.bfloat16)(**inputs)
        ema_in_bf16 = build_dit(cfg, folder / "model_ema_fp32.pt", dtype=torch.bfloat16)(**inputs)
        assert torch.equal(bf16, ema_in_bf16)  # the bf16 file is exactly the fp32 EMA rounded to bf16


# ----------------------------------------------------------------------------------------- sha256 sidecars


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def converted_ema_file(tmp_path: Path) -> Path:
    run = make_run(tmp_path)
    convert.convert_checkpoint(run)
    return run / "checkpoints" / "iter_000000010" / "model_ema_fp32.pt"


def test_every_converted_file_gets_a_sha256sum_sidecar(tmp_path):
    written = convert.convert_checkpoint(make_run(tmp_path))
    for path in written:
        assert sidecar(path).read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    assert stray_files(written[0].parent) == []


def test_a_flipped_byte_is_named_by_every_reader(tmp_path):
    from cosmos_engine.models.flavors import dit_config
    from cosmos_engine.models.state_dict import build_dit, read_state_dict

    ema = converted_ema_file(tmp_path)
    recorded = sidecar(ema).read_text().split()[0]
    data = bytearray(ema.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ema.write_bytes(bytes(data))
    found = hashlib.sha256(data).hexdigest()
    for read in (lambda: read_state_dict(ema), lambda: build_dit(dit_config("tiny"), ema)):
        with pytest.raises(CheckpointError) as info:
            read()
        assert str(info.value).startswith(f"{ema}: sha256 mismatch: model_ema_fp32.pt.sha256 records {recorded}, "
                                          f"the file has {found}")


def test_without_a_sidecar_the_file_is_read_unchecked(tmp_path):
    from cosmos_engine.models.state_dict import read_state_dict

    ema = converted_ema_file(tmp_path)
    sidecar(ema).unlink()  # as an official release: no sidecar
    assert list(read_state_dict(ema)) == ["accum_iteration", "blocks.0.mlp.layer1.weight", "final_layer.linear.weight"]


@pytest.mark.parametrize("content, message", [
    (b"", "garbled checksum file (no sha256 digest first)"),
    (b"deadbeef  model_ema_fp32.pt\n", "garbled checksum file (no sha256 digest first)"),
    (b"\xff\xfe\x00\x01", "garbled checksum file (not ASCII text)"),
])
def test_a_garbled_sidecar_is_named(tmp_path, content, message):
    from cosmos_engine.models.state_dict import read_state_dict

    ema = converted_ema_file(tmp_path)
    sidecar(ema).write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(ema)
    assert str(info.value).startswith(f"{sidecar(ema)}: {message}; expected '<64 hex digits>  model_ema_fp32.pt'")


# ------------------------------------------------------------------------- a recipe's run: convert, run:


@pytest.fixture
def recipe(tmp_path, monkeypatch) -> Path:
    """recipes/demo.toml in the working directory (tmp_path), training into ROOT/p/g/demo, with
    $IMAGINAIRE_OUTPUT_ROOT = tmp_path/root."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGINAIRE_OUTPUT_ROOT", str(tmp_path / "root"))
    path = Path("recipes/demo.toml")
    path.parent.mkdir()
    path.write_text('[job]\nproject = "p"\ngroup = "g"\nname = "demo"\n')
    return path


def save_checkpoints(checkpoints: Path, *iterations: int) -> None:
    """Complete checkpoints as the trainer saves them, with `trainer_state` as the model part."""
    from cosmos_engine.train.checkpoint import CheckpointManager

    manager = CheckpointManager(checkpoints, keep_last=10)
    for iteration in iterations:
        counters = {"step": torch.tensor(iteration)}
        manager.save(iteration, {"model": trainer_state(seed=iteration), "optim": counters, "scheduler": counters,
                                 "trainer": counters})


def test_convert_a_recipe_takes_its_runs_newest_complete_checkpoint(recipe, tmp_path, capsys):
    checkpoints = tmp_path / "root" / "p" / "g" / "demo" / "checkpoints"
    assert main(["convert", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {checkpoints}: no complete checkpoint of the run" in err, err

    save_checkpoints(checkpoints, 5, 10)
    (checkpoints / "iter_000000015" / "model").mkdir(parents=True)  # an unfinished save: skipped
    assert main(["convert", str(recipe)]) == 0
    assert capsys.readouterr().out.split() == [str(checkpoints / "iter_000000010" / name) for name in OUTPUTS]
    assert not list((checkpoints / "iter_000000005").glob("*.pt"))


def test_run_checkpoint_path_names_the_latest_converted_ema_file(recipe, tmp_path, capsys):
    checkpoints = tmp_path / "root" / "p" / "g" / "demo" / "checkpoints"
    save_checkpoints(checkpoints, 5)
    not_converted = f"{checkpoints / 'iter_000000005' / 'model_ema_fp32.pt'}: the run's latest checkpoint is not " \
                    "converted yet; run `cosmos-engine convert recipes/demo.toml` first"
    tiny_infer = REPO_ROOT / "recipes" / "tiny_infer.toml"
    for how in (["--checkpoint-path", "run:recipes/demo.toml"], ["--set", "infer.checkpoint_path=run:recipes/demo.toml"]):
        assert main(["infer", str(tiny_infer), "--set", f"infer.output_dir={tmp_path / 'out'}", *how]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and not_converted in err, err

    convert.convert_checkpoint(recipe)
    assert convert.run_ema_file(recipe) == checkpoints.absolute() / "iter_000000005" / "model_ema_fp32.pt"
    save_checkpoints(checkpoints, 10)  # a newer checkpoint, not converted yet
    with pytest.raises(CheckpointError, match="iter_000000010/model_ema_fp32.pt: the run's latest checkpoint is not"):
        convert.run_ema_file(recipe)


def test_a_killed_conversion_s_temporary_is_removed_by_the_next(tmp_path):
    import subprocess

    run = make_run(tmp_path)
    iteration = run / "checkpoints" / "iter_000000010"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (iteration / f".model.pt.{dead.pid}.0123456789ab.tmp").write_bytes(b"half a file")
    convert.convert_checkpoint(iteration)
    assert stray_files(iteration) == []
