"""`cosmos-engine prepare`: turn a folder of clips into a training set in the official layout.

```
DATASET/
  videos/<stem>.mp4     the clips (hard links to the sources when possible, else copies)
  metas/<stem>.txt      the caption, exactly the prompt string with no trailing newline (as the official
                        scripts/create_prompts_for_nemo_assets.py writes it)
  manifest.json         per video: frames, fps, width, height, codec, duration, sha256, size, mtime_ns
```

Rules, and why:
* Every file of SRC is probed first (one full decode, `video_io.probe_video`); nothing is written until all
  are checked. A file that is empty, not an .mp4, unreadable, corrupt, audio-only, or shorter than one
  training window (`num_frames`) is reported by name with the reason. Without `skip_bad` that is a
  DatasetError (exit 2) before anything is written; with it, the good videos are prepared and the bad ones
  returned in `PrepareResult.bad`.
* Videos are hard-linked when SRC and DATASET share a filesystem (instant, no extra disk), else copied
  (`copy=True` forces copies). A hard link shares the inode, so an in-place edit of the source shows in
  the dataset (tools that write a new file leave the dataset's link alone). Either way is safe: the
  manifest records (size, mtime_ns), readers re-probe and re-hash a video whose stat changed, and the
  cache, keyed by content hash, never trusts stale entries.
* Re-running is idempotent: a video already in place (same inode, or same bytes), a caption with the same
  text and an unchanged manifest are left untouched. DATASET/videos mirrors the good videos of SRC: a video
  an earlier run put there (it is in the old manifest) and that is no longer in SRC is removed with its
  caption; an .mp4 there that prepare did not write is an error, so no user file is deleted.
* Captions: `prompt` when given, else a sidecar SRC/<stem>.txt, else an existing DATASET/metas/<stem>.txt;
  UTF-8 text, not empty (`read_caption`, which training uses too).
* All writes are atomic (temporary name in the same folder, then rename).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from cosmos_engine.atomic import atomic_path, unwritable_reason
from cosmos_engine.data import synthetic
from cosmos_engine.data.video_io import (
    VideoProbe, encode_video, probe_video, sha256_file, write_if_changed,
)
from cosmos_engine.errors import DatasetError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class VideoEntry:
    """One manifest record. (size, mtime_ns) tell a reader whether `sha256` still describes the file."""

    frames: int
    fps: float
    width: int
    height: int
    codec: str
    duration: float
    sha256: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path, probe: VideoProbe, sha256: str | None = None) -> VideoEntry:
        stat = path.stat()
        return cls(frames=probe.frames, fps=probe.fps, width=probe.width, height=probe.height, codec=probe.codec,
                   duration=round(probe.duration, 6), sha256=sha256 or sha256_file(path), size=stat.st_size,
                   mtime_ns=stat.st_mtime_ns)

    def matches_stat(self, path: Path) -> bool:
        stat = path.stat()
        return (stat.st_size, stat.st_mtime_ns) == (self.size, self.mtime_ns)


@dataclass(frozen=True)
class BadFile:
    path: Path
    reason: str  # a sentence naming the file


@dataclass
class PrepareResult:
    out: Path
    videos: list[str] = field(default_factory=list)  # names in DATASET/videos, sorted
    bad: list[BadFile] = field(default_factory=list)
    written: int = 0  # files (videos, captions, manifest) created or replaced
    removed: int = 0  # videos of an earlier run no longer in SRC


def read_manifest(dataset_dir: Path) -> dict[str, VideoEntry]:
    """The manifest's video records by file name; DatasetError when it is missing or malformed."""
    path = Path(dataset_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
        return {name: VideoEntry(**entry) for name, entry in data["videos"].items()}
    except FileNotFoundError:
        raise DatasetError(f"{path}: not found; build the dataset with `cosmos-engine prepare SRC --out {dataset_dir}`") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a cosmos-engine manifest ({exc}); re-run `cosmos-engine prepare`") from None


def read_caption(path: Path) -> str:
    """The stripped UTF-8 text of a caption file; DatasetError naming the file when it cannot be read."""
    try:
        return Path(path).read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: the caption is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the caption ({exc.strerror})") from None


def _check_out(out: Path) -> None:
    problem = unwritable_reason(out)
    if problem:
        raise DatasetError(f"{out}: cannot write the dataset there ({problem})")


def _manifest_text(entries: dict[str, VideoEntry], min_frames: int) -> str:
    data = {"format": MANIFEST_FORMAT, "min_frames": min_frames,
            "videos": {name: asdict(entries[name]) for name in sorted(entries)}}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class _Checked:
    source: Path
    name: str  # <stem>.mp4 in DATASET/videos
    prompt: str
    probe: VideoProbe
    sha256: str


def prepare_videos(src: Path, out: Path, *, prompt: str | None = None, num_frames: int = 93,
                   skip_bad: bool = False, copy: bool = False) -> PrepareResult:
    """Probe every file of `src`, then write the dataset to `out` (see the module docstring)."""
    src, out = Path(src).absolute(), Path(out).absolute()
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder of videos")
    _check_out(out)
    candidates = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".txt")
    if not candidates:
        raise DatasetError(f"{src}: contains no files (expected .mp4 videos)")

    good: list[_Checked] = []
    bad: list[BadFile] = []
    names: set[str] = set()
    for path in tqdm(candidates, desc="probing videos", unit="video", disable=None):
        try:
            good.append(_check(path, out, prompt, num_frames, names))
            names.add(good[-1].name)
        except DatasetError as exc:
            bad.append(BadFile(path, str(exc)))
    if bad and not skip_bad:
        reasons = "; ".join(b.reason for b in bad)
        raise DatasetError(f"{len(bad)} of {len(candidates)} files in {src} cannot be used, nothing was written: {reasons}. "
                           "Fix or remove them, or pass --skip-bad to prepare the others")
    if not good:
        raise DatasetError(f"{src}: none of its {len(candidates)} files is a usable video")

    videos_dir, metas_dir = out / "videos", out / "metas"
    old = _old_manifest(out)
    in_place = videos_dir.is_dir() and src.resolve() == videos_dir.resolve()
    stale = [] if in_place else _stale_videos(videos_dir, names, old)

    result = PrepareResult(out=out, bad=bad)
    entries: dict[str, VideoEntry] = {}
    for item in good:
        dst = videos_dir / item.name
        result.written += _place(item.source, dst, item.sha256, copy)
        result.written += write_if_changed(metas_dir / f"{Path(item.name).stem}.txt", item.prompt)
        entries[item.name] = VideoEntry.of(dst, item.probe, item.sha256)
    for name in stale:
        (videos_dir / name).unlink()
        (metas_dir / f"{Path(name).stem}.txt").unlink(missing_ok=True)
        log.info("removed %s (from an earlier prepare, no longer in %s)", videos_dir / name, src)
    result.removed = len(stale)
    result.written += write_if_changed(out / MANIFEST_NAME, _manifest_text(entries, num_frames))
    result.videos = sorted(entries)
    log.debug("%s: %d videos ready (%d files written, %d removed, %d skipped)", out, len(entries), result.written,
             result.removed, len(bad))
    return result


def prepare_synthetic(out: Path, *, count: int = 4, seed: int = 0, frames: int = 33, height: int = 64,
                      width: int = 112, fps: float = 16.0, prompt: str = synthetic.DEFAULT_PROMPT) -> PrepareResult:
    """Draw `count` procedural clips into `out`/videos as synthetic_0000.mp4..., then index that folder.

    Clips are rendered in memory and written only when their bytes differ from the file already there, so
    a re-run with the same arguments writes nothing. Clips of an earlier, larger run are removed. A folder
    that already holds other videos is refused: their captions would be overwritten with `prompt`.
    """
    if count < 1 or frames < 1 or height < 2 or width < 2:
        raise DatasetError(f"--synthetic needs at least 1 clip of at least 1 frame and 2x2 pixels, got {count} clips, "
                           f"{frames} frames, {height}x{width}")
    _check_out(Path(out).absolute())
    videos_dir = Path(out) / "videos"
    names = {f"synthetic_{index:04d}.mp4" for index in range(count)}
    existing = sorted(p.name for p in videos_dir.glob("*.mp4")) if videos_dir.is_dir() else []
    foreign = [name for name in existing if not (name.startswith("synthetic_") and name[10:-4].isdigit())]
    if foreign:
        raise DatasetError(f"{videos_dir} already holds other videos ({', '.join(foreign)}); "
                           "--synthetic needs a new or synthetic-only dataset folder")
    written = 0
    for index in range(count):
        clip = synthetic.render_clip(seed, index, frames, height, width)
        written += write_if_changed(videos_dir / f"synthetic_{index:04d}.mp4", encode_video(clip, fps))
    for name in set(existing) - names:
        (videos_dir / name).unlink()
        (Path(out) / "metas" / f"{Path(name).stem}.txt").unlink(missing_ok=True)
    result = prepare_videos(videos_dir, out, prompt=prompt, num_frames=frames)
    result.written += written
    return result


def _check(path: Path, out: Path, prompt: str | None, num_frames: int, names: set[str]) -> _Checked:
    """Probe one source file and find its caption; DatasetError (naming the file) when it is unusable."""
    if path.suffix.lower() != ".mp4":
        raise DatasetError(f"{path}: not an .mp4 file (the dataset layout holds only videos/*.mp4; remux or "
                           "convert it, e.g. with ffmpeg)")
    name = f"{path.stem}.mp4"
    if name in names:
        raise DatasetError(f"{path}: another file in the folder also becomes videos/{name}")
    probe = probe_video(path)
    if probe.frames < num_frames:
        raise DatasetError(f"{path}: too short, {probe.frames} frames where a training window needs {num_frames} "
                           "(--num-frames)")
    caption = prompt
    if caption is None:
        for candidate in (path.with_suffix(".txt"), out / "metas" / f"{path.stem}.txt"):
            if candidate.is_file():
                caption = read_caption(candidate)
                break
    if not caption:
        raise DatasetError(f"{path}: no caption; pass --prompt or write it to {path.with_suffix('.txt')}")
    return _Checked(source=path, name=name, prompt=caption, probe=probe, sha256=sha256_file(path))


def _old_manifest(out: Path) -> dict[str, VideoEntry]:
    if not (out / MANIFEST_NAME).exists():
        return {}
    try:
        return read_manifest(out)
    except DatasetError as exc:
        log.warning("ignoring the existing manifest: %s", exc)
        return {}


def _stale_videos(videos_dir: Path, names: set[str], old: dict[str, VideoEntry]) -> list[str]:
    """Videos in DATASET/videos that are not being prepared now. Those an earlier prepare wrote are
    returned (to be removed); any other is a user file, which is an error rather than a deletion."""
    if not videos_dir.is_dir():
        return []
    extra = sorted(p.name for p in videos_dir.glob("*.mp4") if p.name not in names)
    foreign = [name for name in extra if name not in old]
    if foreign:
        raise DatasetError(f"{videos_dir} holds videos that prepare did not write and that are not in the source: "
                           f"{', '.join(foreign)}; move them into the source folder or elsewhere")
    return extra


def _place(source: Path, dst: Path, sha256: str, copy: bool) -> bool:
    """Put `source`'s bytes at `dst` (hard link, else copy) unless they are already there. Returns whether
    it wrote."""
    if dst.exists() and (os.path.samefile(source, dst)
                         or (dst.stat().st_size == source.stat().st_size and sha256_file(dst) == sha256)):
        return False
    with atomic_path(dst) as tmp:
        if not copy:
            try:
                os.link(source, tmp)
                return True
            except OSError as exc:  # another filesystem, or links not allowed: copy instead
                log.debug("cannot hard-link %s (%s); copying", source, exc)
        shutil.copyfile(source, tmp)
    return True
