"""`cosmos-engine prepare`: layout, validation of bad files, idempotence, links, synthetic clips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from cosmos_engine.cli import main
from cosmos_engine.data.cache import human_bytes
from cosmos_engine.data.prepare import prepare_synthetic, prepare_videos, read_manifest
from cosmos_engine.data.synthetic import DEFAULT_PROMPT, render_clip
from cosmos_engine.data.video_io import encode_video, sha256_file, write_video
from cosmos_engine.errors import DatasetError

PROMPT = "A video of sks teal robot."


def write_clip(path: Path, frames: int, index: int = 0) -> Path:
    write_video(path, render_clip(7, index, frames, 48, 64), fps=16)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    write_clip(src / "good_a.mp4", 20, 0)
    write_clip(src / "good_b.mp4", 17, 1)  # exactly --num-frames: valid
    clip = (src / "good_a.mp4").read_bytes()
    (src / "corrupt.mp4").write_bytes(clip[: len(clip) // 2])
    write_clip(src / "short.mp4", 9, 2)
    write_audio_only(src / "audio.mp4")
    (src / "empty.mp4").write_bytes(b"")
    (src / "notes.csv").write_text("clip,quality\ngood_a,ok\n")
    return src


BAD = {"corrupt.mp4": "cannot be opened", "short.mp4": "too short, 9 frames", "audio.mp4": "no video stream",
       "empty.mp4": "empty file", "notes.csv": "not an .mp4 file"}


def test_bad_files_are_named_and_nothing_is_written(bad_folder, tmp_path, capsys):
    out = tmp_path / "dataset"
    assert main(["prepare", str(bad_folder), "--out", str(out), "--prompt", PROMPT, "--num-frames", "17"]) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("cosmos-engine prepare: error:"))
    assert "5 of 7 files" in line and "--skip-bad" in line
    for name, reason in BAD.items():
        assert f"{name}: {reason}" in line
    assert "good_a" not in line and "good_b" not in line
    assert not out.exists()


def test_skip_bad_prepares_the_good_videos_and_lists_the_others(bad_folder, tmp_path, capsys):
    out = tmp_path / "dataset"
    assert main(["prepare", str(bad_folder), "--out", str(out), "--prompt", PROMPT, "--num-frames", "17", "--skip-bad"]) == 0
    stdout = capsys.readouterr().out
    assert "2 videos ready" in stdout and "skipped 5 unusable files" in stdout
    for name, reason in BAD.items():
        assert f"{name}: {reason}" in stdout
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["good_a.mp4", "good_b.mp4"]
    assert sorted(read_manifest(out)) == ["good_a.mp4", "good_b.mp4"]


def test_cli_subprocess_exits_2_with_one_line_and_no_traceback(bad_folder, tmp_path):
    exe = Path(sys.executable).parent / "cosmos-engine"
    proc = subprocess.run([str(exe), "prepare", str(bad_folder), "--out", str(tmp_path / "d"), "--prompt", PROMPT],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("cosmos-engine prepare: error: ")
    assert all(name in errors[0] for name in BAD)


def test_layout_manifest_and_captions(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_clip(src / "clip1.mp4", 21, 0)
    write_clip(src / "clip2.mp4", 25, 1)
    (src / "clip2.txt").write_text("A sidecar caption.\n")
    out = tmp_path / "dataset"
    with pytest.raises(DatasetError, match="clip1.mp4: no caption"):
        prepare_videos(src, out, num_frames=17)
    (src / "clip1.txt").write_text("First clip.")
    result = prepare_videos(src, out, num_frames=17)
    assert result.videos == ["clip1.mp4", "clip2.mp4"]
    assert (out / "metas" / "clip2.txt").read_bytes() == b"A sidecar caption."  # stripped, no trailing newline
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["videos"]["clip2.mp4"]
    assert entry["frames"] == 25 and entry["fps"] == 16.0 and (entry["width"], entry["height"]) == (64, 48)
    assert entry["codec"] == "h264" and entry["duration"] == pytest.approx(25 / 16, abs=0.01)
    assert entry["sha256"] == sha256_file(src / "clip2.mp4")
    # --prompt wins over sidecars.
    prepare_videos(src, out, num_frames=17, prompt=PROMPT)
    assert (out / "metas" / "clip1.txt").read_text() == PROMPT


def test_rerun_is_idempotent_and_links_or_copies(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_clip(src / "a.mp4", 17, 0)
    out = tmp_path / "dataset"
    first = prepare_videos(src, out, prompt=PROMPT, num_frames=17)
    assert first.written == 3  # video, caption, manifest
    assert (out / "videos" / "a.mp4").stat().st_ino == (src / "a.mp4").stat().st_ino  # hard link
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = prepare_videos(src, out, prompt=PROMPT, num_frames=17)
    assert again.written == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps

    copied = tmp_path / "copied"
    prepare_videos(src, copied, prompt=PROMPT, num_frames=17, copy=True)
    assert (copied / "videos" / "a.mp4").stat().st_ino != (src / "a.mp4").stat().st_ino
    assert (copied / "manifest.json").read_text().count("sha256") == 1
    assert prepare_videos(src, copied, prompt=PROMPT, num_frames=17, copy=True).written == 0


def test_dataset_mirrors_the_source_and_keeps_user_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_clip(src / "a.mp4", 17, 0)
    write_clip(src / "b.mp4", 17, 1)
    out = tmp_path / "dataset"
    prepare_videos(src, out, prompt=PROMPT, num_frames=17)
    (src / "b.mp4").unlink()
    result = prepare_videos(src, out, prompt=PROMPT, num_frames=17)
    assert result.removed == 1 and result.videos == ["a.mp4"]
    assert sorted(p.name for p in (out / "metas").iterdir()) == ["a.txt"]
    write_clip(out / "videos" / "mine.mp4", 17, 2)  # not written by prepare: never deleted
    with pytest.raises(DatasetError, match="prepare did not write.*mine.mp4"):
        prepare_videos(src, out, prompt=PROMPT, num_frames=17)
    assert (out / "videos" / "mine.mp4").exists()


def test_prepare_in_place_on_an_official_layout(tmp_path):
    """An official-layout folder (videos/ + metas/, no manifest) is indexed where it is."""
    dataset = tmp_path / "nemo"
    (dataset / "metas").mkdir(parents=True)
    write_clip(dataset / "videos" / "v.mp4", 17, 0)
    (dataset / "metas" / "v.txt").write_text(PROMPT)
    result = prepare_videos(dataset / "videos", dataset, num_frames=17)
    assert result.videos == ["v.mp4"] and result.written == 1  # only the manifest
    assert read_manifest(dataset)["v.mp4"].frames == 17


def test_synthetic_clips_are_deterministic_and_rerun_writes_nothing(tmp_path):
    a = prepare_synthetic(tmp_path / "a", count=2, seed=3, frames=9, height=32, width=48)
    assert a.videos == ["synthetic_0000.mp4", "synthetic_0001.mp4"]
    assert (tmp_path / "a" / "metas" / "synthetic_0000.txt").read_text() == DEFAULT_PROMPT
    assert read_manifest(tmp_path / "a")["synthetic_0001.mp4"].frames == 9
    assert prepare_synthetic(tmp_path / "a", count=2, seed=3, frames=9, height=32, width=48).written == 0
    prepare_synthetic(tmp_path / "b", count=2, seed=3, frames=9, height=32, width=48)
    prepare_synthetic(tmp_path / "c", count=2, seed=4, frames=9, height=32, width=48)
    sha = {d: read_manifest(tmp_path / d)["synthetic_0000.mp4"].sha256 for d in "abc"}
    assert sha["a"] == sha["b"] != sha["c"]
    smaller = prepare_synthetic(tmp_path / "a", count=1, seed=3, frames=9, height=32, width=48)
    assert smaller.videos == ["synthetic_0000.mp4"]
    assert not (tmp_path / "a" / "metas" / "synthetic_0001.txt").exists()


def test_synthetic_cli_defaults_suit_a_tiny_recipe(tmp_path, capsys):
    assert main(["prepare", "--synthetic", "2", "--out", str(tmp_path / "d")]) == 0
    entry = read_manifest(tmp_path / "d")["synthetic_0000.mp4"]
    assert (entry.frames - 1) % 4 == 0 and entry.height % 16 == 0 and entry.width % 16 == 0
    assert "2 videos ready" in capsys.readouterr().out


def test_cli_needs_exactly_one_source(tmp_path, capsys):
    assert main(["prepare", "--out", str(tmp_path / "d")]) == 2
    assert "give SRC" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path), "--synthetic", "1", "--out", str(tmp_path / "d")]) == 2
    assert "not both" in capsys.readouterr().err


TINY_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny_posttrain.toml"
SMALL_WINDOWS = ["--set", "data.num_frames=5", "--set", "data.height=32", "--set", "data.width=48",
                 "--set", "data.num_workers=0"]


def test_prepare_cache_encodes_every_window_once_for_the_recipe(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["prepare", "--synthetic", "2", "--frames", "9", "--size", "32x48", "--out", str(out),
            "--cache", str(TINY_RECIPE), *SMALL_WINDOWS]
    assert main(args) == 0
    # 9-frame clips, 5-frame windows: starts 0 and 4 in each of the 2 videos; one caption.
    printed = capsys.readouterr().out
    assert "4 latents and 1 captions encoded, 0 already cached" in printed
    latents = sorted((out / "cache" / "latents").rglob("*.safetensors"))
    assert len(latents) == 4 and len({p.parent.name for p in latents}) == 2
    size = human_bytes(sum(p.stat().st_size for p in latents))
    assert f"4 windows ({size} on disk, window_stride 16, at most 256 per video) and captions" in printed
    # Caching an existing dataset (no SRC) finds everything: what `run` builds before its first step is there.
    assert main(["prepare", "--out", str(out), "--cache", str(TINY_RECIPE), *SMALL_WINDOWS]) == 0
    assert "0 latents and 0 captions encoded, 5 already cached" in capsys.readouterr().out
    # Another training size is another set of entries.
    assert main(["prepare", "--out", str(out), "--cache", str(TINY_RECIPE), *SMALL_WINDOWS[:-6],
                 "--set", "data.height=16", "--set", "data.width=32", "--set", "data.num_workers=0"]) == 0
    assert "4 latents and 0 captions encoded, 1 already cached" in capsys.readouterr().out


def test_prepare_cache_with_the_cache_off_encodes_captions_only(tmp_path, capsys):
    out = tmp_path / "d"
    prepare_synthetic(out, count=1, frames=9, height=32, width=48)
    assert main(["prepare", "--out", str(out), "--cache", str(TINY_RECIPE), *SMALL_WINDOWS,
                 "--set", "data.cache=off"]) == 0
    assert "captions only" in capsys.readouterr().out
    assert not (out / "cache" / "latents").exists() and len(list((out / "cache" / "text").glob("*.safetensors"))) == 1


def test_prepare_cache_recipe_is_checked_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["prepare", "--synthetic", "1", "--out", str(out), "--cache", str(TINY_RECIPE),
                 "--set", "data.bogus=1"]) == 2
    assert "data.bogus" in capsys.readouterr().err and not out.exists()
    # The tiny recipe trains on 17-frame windows: 9-frame clips would be useless to it.
    assert main(["prepare", "--synthetic", "1", "--frames", "9", "--out", str(out), "--cache", str(TINY_RECIPE)]) == 2
    assert "data.num_frames = 17" in capsys.readouterr().err and not out.exists()


def test_prepare_cache_recipe_sets_the_shortest_usable_video(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    write_clip(src / "short.mp4", 9)
    write_clip(src / "long.mp4", 21, index=1)
    out = tmp_path / "d"
    assert main(["prepare", str(src), "--out", str(out), "--prompt", PROMPT, "--skip-bad",
                 "--cache", str(TINY_RECIPE), "--set", "data.height=32", "--set", "data.width=48",
                 "--set", "data.num_workers=0"]) == 0
    printed = capsys.readouterr().out
    assert "1 videos ready" in printed and "short.mp4" in printed  # 9 < the recipe's 17 frames
    assert "2 latents and 1 captions encoded" in printed  # 21 frames: windows at 0 and 4


def test_prepare_cache_errors_name_what_is_wrong(tmp_path, capsys):
    assert main(["prepare", "--out", str(tmp_path / "d"), "--set", "data.num_frames=5"]) == 2
    assert "--cache RECIPE" in capsys.readouterr().err
    assert main(["prepare", "--out", str(tmp_path / "missing"), "--cache", str(TINY_RECIPE)]) == 2
    assert "missing" in capsys.readouterr().err


def test_encode_is_deterministic():
    """With x264's macroblock tree on, about 4 in 10 encodes of these frames came out different."""
    frames = render_clip(0, 0, 33, 64, 112)
    assert len({encode_video(frames, 16) for _ in range(20)}) == 1
