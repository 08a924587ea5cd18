"""A run folder as hostile or unlucky users meet it: crafted checkpoints, two runs at once, a changed recipe,
preemption signals, damaged checkpoints and a full disk. Each ends in one line, or in a run that finishes
bitwise as if nothing had happened."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from cosmos_engine.errors import CheckpointError
from cosmos_engine.train import optim
from cosmos_engine.train.checkpoint import CheckpointManager, complete_checkpoints
from cosmos_engine.train.run_folder import LOCK_FILE, RECIPE_RECORD, RunFolderBusy, RunLock
from tests.train.runs import CLI, assert_same_weights, env_for, final_weights, make_dataset, run_args, run_folder

STEPS = 6  # the runs compared with the uninterrupted reference


class MakesMarker:
    """Unpickling this creates a folder: proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny_synthetic"))


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """Final weights of an uninterrupted STEPS-step run."""
    root = tmp_path_factory.mktemp("reference")
    result = run(dataset, root, "straight", STEPS, STEPS)
    assert result.returncode == 0, result.stderr
    return final_weights(root, "straight", STEPS)


@pytest.fixture(scope="module")
def two_step_run(dataset, tmp_path_factory):
    """(root, name) of a finished 2-step run with a checkpoint at step 2, to copy and then resume or damage."""
    root = tmp_path_factory.mktemp("two_steps")
    result = run(dataset, root, "base", 2, 2)
    assert result.returncode == 0, result.stderr
    return root, "base"


def run(dataset, root, name, steps, save_every, *extra, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *run_args(dataset, name, steps, save_every, *extra)], capture_output=True,
                          text=True, timeout=timeout, env=env_for(root))


def launch(dataset, root, name, steps, save_every, *extra) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *run_args(dataset, name, steps, save_every, *extra)], env=env_for(root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def copy_run(source: tuple[Path, str], root: Path) -> Path:
    folder = run_folder(root, source[1])
    shutil.copytree(run_folder(*source), folder)
    return folder


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a failed command (logging lines above it are INFO/WARNING records)."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cosmos-engine ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def steps_logged(folder: Path) -> list[int]:
    path = folder / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_step(proc: subprocess.Popen, folder: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        logged = steps_logged(folder)
        if logged and logged[-1] >= step:
            return
        time.sleep(0.005)
    raise AssertionError(f"the run did not reach step {step} (exit {proc.poll()})")


# ----------------------------------------------------------------------------------------------------------------------
# Resume never runs code from the run folder
# ----------------------------------------------------------------------------------------------------------------------


def test_the_payload_runs_code_when_unpickled(tmp_path):
    """The hostile objects below are live: plain pickle would create the marker."""
    pickle.loads(pickle.dumps(MakesMarker(tmp_path / "marker")))
    assert (tmp_path / "marker").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("vector", ["model/.metadata", "optim/.metadata", "scheduler/.metadata",
                                    "trainer/.metadata", "trainer iteration item"])
def test_a_hostile_checkpoint_is_refused_and_runs_nothing(dataset, two_step_run, tmp_path, vector):
    folder = copy_run(two_step_run, tmp_path)
    checkpoint = folder / "checkpoints" / "iter_000000002"
    marker = tmp_path / "marker"
    if vector.endswith(".metadata"):
        target = checkpoint / vector
        target.write_bytes(pickle.dumps(MakesMarker(marker)))
    else:  # the trainer part saved again with a pickled object as its iteration
        target = checkpoint / "trainer"
        shutil.rmtree(target)
        data = {key: torch.tensor(0) for key in ("seed", "rank", "world_size", "num_videos", "position")}
        dcp.save({"iteration": MakesMarker(marker), "data": data}, checkpoint_id=target, no_dist=True)
    result = run(dataset, tmp_path, "base", 3, 3)
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert str(target) in line and "--trust-checkpoint" in line
    assert not marker.exists()
    assert steps_logged(folder) == [1, 2]  # nothing trained


# ----------------------------------------------------------------------------------------------------------------------
# One run per folder
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_a_busy_folder_is_refused_and_the_first_is_unharmed(dataset, reference, tmp_path):
    first = launch(dataset, tmp_path, "shared", STEPS, 3)
    time.sleep(1.0)
    with paused_lock_holder(run_folder(tmp_path, "shared"), [first]):  # still running when the second tries
        second = run(dataset, tmp_path, "shared", STEPS, 3)
    assert second.returncode == 2, second.stderr
    line = error_line(second)
    assert str(run_folder(tmp_path, "shared")) in line and f"pid {first.pid} on host {socket.gethostname()}" in line
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert steps_logged(run_folder(tmp_path, "shared")) == list(range(1, STEPS + 1))
    assert_same_weights(final_weights(tmp_path, "shared", STEPS), reference)


@pytest.mark.slow
def test_two_runs_started_together_one_wins(dataset, reference, tmp_path):
    procs = [launch(dataset, tmp_path, "race", STEPS, 3) for _ in range(2)]
    with paused_lock_holder(run_folder(tmp_path, "race"), procs) as winner:
        loser = next(proc for proc in procs if proc is not winner)
        assert loser.wait(timeout=300) == 2
    assert winner.wait(timeout=300) == 0, winner.stderr.read()
    stderr = loser.stderr.read()
    assert "another run is using this run folder" in stderr and "Traceback" not in stderr
    assert steps_logged(run_folder(tmp_path, "race")) == list(range(1, STEPS + 1))
    assert_same_weights(final_weights(tmp_path, "race", STEPS), reference)


@contextlib.contextmanager
def paused_lock_holder(folder: Path, procs: list[subprocess.Popen]):
    """Wait until one of `procs` holds the folder's lock, keep it stopped (SIGSTOP) for the block, yield it.
    A stopped process keeps its lock, so what the block does meets a busy folder whatever the timing."""
    lock, deadline = folder / LOCK_FILE, time.monotonic() + 120
    while time.monotonic() < deadline:
        text = lock.read_text() if lock.exists() else ""
        holder = next((proc for proc in procs if f'"pid": {proc.pid}' in text), None)
        if holder is not None:
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"no run took the lock {lock}")
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        yield holder
    finally:
        os.kill(holder.pid, signal.SIGCONT)


def test_a_held_lock_names_its_holder(tmp_path):
    host = socket.gethostname()
    holder = subprocess.Popen(["python3", "-c", "import fcntl, json, os, time\n"
                               f"fd = os.open({str(tmp_path / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               f"os.write(fd, json.dumps({{'pid': os.getpid(), 'host': {host!r}}}).encode())\n"
                               "print('locked', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"another run is using this run folder \\(pid {holder.pid} on host {host}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path)  # the holder's death released it
    lock.acquire()
    lock.release()


def test_a_stale_lock_of_this_host_is_taken_over_and_one_of_another_host_is_reported(tmp_path, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert f"taking over the lock left by pid {dead.pid}" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean end leaves no holder behind

    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1234, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunFolderBusy, match=f"pid 1234 on host elsewhere.*rm {tmp_path / LOCK_FILE}"):
        RunLock(tmp_path).acquire()


# ----------------------------------------------------------------------------------------------------------------------
# Resume policy
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_recipe_change_on_resume_is_refused_unless_allowed(dataset, two_step_run, tmp_path):
    folder = copy_run(two_step_run, tmp_path)
    recipe_before = (folder / "recipe.toml").read_text()
    refused = run(dataset, tmp_path, "base", 3, 3, "--set", "train.lr=0.002", "--set", "train.weight_decay=0.01")
    assert refused.returncode == 2
    line = error_line(refused)
    assert "train.lr (0.001 -> 0.002)" in line and "train.weight_decay" in line and "--allow-recipe-change" in line
    assert (folder / "recipe.toml").read_text() == recipe_before and steps_logged(folder) == [1, 2]

    allowed = run(dataset, tmp_path, "base", 3, 3, "--set", "train.lr=0.002", "--set", "train.weight_decay=0.01",
                  "--allow-recipe-change")
    assert allowed.returncode == 0, allowed.stderr
    assert "train.lr" in allowed.stderr and "train.weight_decay" in allowed.stderr  # said so
    step3 = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert step3["step"] == 3 and step3["lr"] == 0.002 * optim.lr_factor(2, 0)
    dcp_to_torch_save(folder / "checkpoints" / "iter_000000003" / "optim", tmp_path / "optim.pt")
    groups = torch.load(tmp_path / "optim.pt", weights_only=True)
    decays = {v for k, v in groups.items() if k.endswith(".weight_decay")}
    assert decays == {0.01}, decays
    recorded = json.loads((folder / RECIPE_RECORD).read_text())
    assert recorded["train.lr"] == 0.002 and recorded["train.weight_decay"] == 0.01
    assert "lr = 0.002" in (folder / "recipe.toml").read_text()


def test_a_key_added_to_the_schema_after_a_run_started_counts_as_its_default():
    """A run recorded before [lora] (or train.conditional_frames_probs) existed trained with their defaults: its
    resume is no recipe change, unless the new key is set to something else."""
    from cosmos_engine.config import load_recipe
    from cosmos_engine.train.run_folder import changed_keys, fingerprint

    old_record = {k: v for k, v in fingerprint(load_recipe(None)).items() if not k.startswith("lora.")}
    assert changed_keys(old_record, fingerprint(load_recipe(None))) == []
    assert changed_keys(old_record, fingerprint(load_recipe(None, ["lora.enabled=true"]))) == ["lora.enabled"]


@pytest.mark.slow
def test_resume_false_into_a_used_folder_needs_overwrite_which_keeps_the_old_run(dataset, two_step_run, tmp_path):
    folder = copy_run(two_step_run, tmp_path)
    refused = run(dataset, tmp_path, "base", 1, 1, "--set", "checkpoint.resume=false")
    assert refused.returncode == 2 and "--overwrite" in error_line(refused)
    assert [p.name for _, p in complete_checkpoints(folder / "checkpoints")] == ["iter_000000002"]

    fresh = run(dataset, tmp_path, "base", 1, 1, "--set", "checkpoint.resume=false", "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert [p.name for _, p in complete_checkpoints(folder / "checkpoints")] == ["iter_000000001"]
    assert steps_logged(folder) == [1]
    (aside,) = (folder / "replaced").iterdir()
    assert [p.name for _, p in complete_checkpoints(aside / "checkpoints")] == ["iter_000000002"]
    assert steps_logged(aside) == [1, 2]
    latest = (folder / "checkpoints" / "latest_checkpoint.txt").read_text()
    assert latest == "iter_000000001\n"


# ----------------------------------------------------------------------------------------------------------------------
# Stop signals
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "workers"), [(signal.SIGTERM, 0), (signal.SIGINT, 0), (signal.SIGTERM, 2)],
                         ids=["SIGTERM", "SIGINT", "SIGTERM to the loader workers too"])
def test_a_stop_signal_saves_the_step_and_the_rerun_is_bitwise_uninterrupted(dataset, reference, tmp_path, signum,
                                                                             workers):
    folder = run_folder(tmp_path, "preempted")
    # No periodic checkpoint before the end; the signal reaches the loader workers too, as SLURM and Ctrl-C send it.
    proc = subprocess.Popen([*CLI, *run_args(dataset, "preempted", STEPS, 100, "--set", f"data.num_workers={workers}")],
                            env=env_for(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for_step(proc, folder, random.Random(signum).randint(1, STEPS - 2))
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if "stopped by" in line]
    step = int(line.split(" at step ")[1].split(";")[0])
    assert line == (f"cosmos-engine run: stopped by {signal.Signals(signum).name} at step {step}; checkpoint "
                    f"iter_{step:09d} saved; rerun the same command to resume")
    assert [p.name for _, p in complete_checkpoints(folder / "checkpoints")] == [f"iter_{step:09d}"]

    rerun = run(dataset, tmp_path, "preempted", STEPS, 100)
    assert rerun.returncode == 0, rerun.stderr
    assert steps_logged(folder) == list(range(1, STEPS + 1))
    assert_same_weights(final_weights(tmp_path, "preempted", STEPS), reference)


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once_without_a_traceback(dataset, tmp_path):
    proc = launch(dataset, tmp_path, "impatient", 1000, 1000)
    wait_for_step(proc, run_folder(tmp_path, "impatient"), 1)
    proc.send_signal(signal.SIGINT)
    seen = []
    for line in proc.stderr:  # the second Ctrl-C once the first was taken (identical pending signals merge)
        seen.append(line)
        if "SIGINT received" in line:
            proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=60)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130 and "aborting now" in stderr and "Traceback" not in stderr, stderr
    assert "stopped by SIGINT" not in stderr  # it did not wait for the step and its checkpoint


# ----------------------------------------------------------------------------------------------------------------------
# Damaged checkpoints and a full disk
# ----------------------------------------------------------------------------------------------------------------------


def tiny_state(seed: int) -> dict[str, dict]:
    gen = torch.Generator().manual_seed(seed)
    return {"model": {"net.w": torch.randn(64, 64, generator=gen)}, "optim": {"m": torch.randn(8, generator=gen)},
            "scheduler": {"last_epoch": seed}, "trainer": {"iteration": torch.tensor(seed)}}


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_skips_a_broken_newest_checkpoint_and_names_it(tmp_path, caplog, damage):
    manager = CheckpointManager(tmp_path, keep_last=3)
    good = manager.save(10, tiny_state(10))
    broken = manager.save(20, tiny_state(20))
    (shard,) = (broken / "model").glob("*.distcp")
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:100])
    assert manager.latest() == good
    assert f"skipping the broken checkpoint {broken}" in caplog.text and f"{shard}: {damage}" in caplog.text
    with pytest.raises(CheckpointError, match=f"{broken}: not a complete checkpoint"):
        manager.load(broken, tiny_state(0))


def test_a_hostile_bytes_entry_is_refused_by_the_checkpoint_loader(tmp_path):
    state = tiny_state(1)
    state["trainer"]["iteration"] = MakesMarker(tmp_path / "marker")
    manager = CheckpointManager(tmp_path / "ck", keep_last=1)
    folder = manager.save(1, state)
    with pytest.raises(CheckpointError, match="'iteration'.*--trust-checkpoint"):
        manager.load(folder, tiny_state(0))
    assert not (tmp_path / "marker").exists()


@pytest.fixture
def small_disk(tmp_path):
    """An 80 MiB tmpfs: room for two tiny checkpoints (skips where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()}); the full-disk case is not checked")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_the_rerun_is_bitwise_uninterrupted(dataset, reference,
                                                                                      small_disk):
    keep_one = ("--set", "checkpoint.keep_last=1")  # a save needs room for one checkpoint (31 MB) beside the last
    assert run(dataset, small_disk, "full", 2, 2, *keep_one).returncode == 0
    folder = run_folder(small_disk, "full")
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - (512 << 10)))  # leave room for a few metrics lines, not a checkpoint
    result = run(dataset, small_disk, "full", STEPS, 2, *keep_one)
    assert result.returncode == 2
    line = error_line(result)
    assert line == (f"cosmos-engine run: error: no space left on device while writing {folder}/checkpoints/"
                    "iter_000000004.tmp; the previous checkpoint iter_000000002 is intact; free some space and rerun "
                    "the same command to resume")
    assert not (folder / "checkpoints" / "iter_000000004.tmp").exists()
    assert [p.name for _, p in complete_checkpoints(folder / "checkpoints")] == ["iter_000000002"]
    filler.unlink()
    rerun = run(dataset, small_disk, "full", STEPS, 2, *keep_one)
    assert rerun.returncode == 0, rerun.stderr
    assert steps_logged(folder) == list(range(1, STEPS + 1))
    assert_same_weights(final_weights(small_disk, "full", STEPS), reference)


@pytest.mark.slow
def test_leftovers_of_killed_writes_are_removed_at_start(dataset, two_step_run, tmp_path):
    folder = copy_run(two_step_run, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stray = [folder / f".recipe.toml.{dead.pid}.0123456789ab.tmp",
             folder / "checkpoints" / f".latest_checkpoint.txt.{dead.pid}.0123456789ab.tmp"]
    for path in stray:
        path.write_text("half")
    # An interrupted save's staging folder, and the set-aside copy of a checkpoint that was then published.
    leftovers = [folder / "checkpoints" / "iter_000000099.tmp", folder / "checkpoints" / "iter_000000002.old"]
    for path in leftovers:
        (path / "model").mkdir(parents=True)
    live = folder / f".recipe.toml.{os.getpid()}.0123456789ab.tmp"  # a live writer's file is left alone
    live.write_text("being written")
    result = run(dataset, tmp_path, "base", 3, 3)
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in stray + leftovers) and live.exists()
    assert [p.name for _, p in complete_checkpoints(folder / "checkpoints")] == ["iter_000000002", "iter_000000003"]


@pytest.mark.slow
def test_under_torchrun_a_sigterm_stops_every_rank_at_the_same_step_with_one_checkpoint(dataset, tmp_path):
    folder = run_folder(tmp_path, "ranks")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                             "cosmos_engine.cli", *run_args(dataset, "ranks", 1000, 1000)], env=env_for(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, folder, 2)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    _, stderr = proc.communicate(timeout=120)
    (line,) = [line for line in stderr.splitlines() if "stopped by SIGTERM" in line]  # rank 0 says it
    step = int(line.split(" at step ")[1].split(";")[0])
    assert [p.name for _, p in complete_checkpoints(folder / "checkpoints")] == [f"iter_{step:09d}"]
    assert steps_logged(folder) == list(range(1, step + 1))
