"""The official inference parameter file (reference/vae_data_io.md §5.2), validated as strictly as a recipe.

    {"inference_type": "image2world", "seed": 0, "guidance": 7, "num_output_frames": 93,
     "negative_prompt": "...", "resolution": "none",
     "samples": {"robot": {"prompt": "A video of sks teal robot.", "input_path": "robot.jpg"}}}

`load_sample_file(path, base)` turns such a file into one `InferConfig` per sample, starting from `base`
(the recipe's [infer] table, which supplies what the file cannot say -- frames, fps, sampler, steps, output
folder, checkpoint -- and the values of the keys the file leaves out). Like the official pydantic model (`extra="forbid"`): an unknown key, a value of the wrong
type (an integer is not a string, `true` is not an integer, `7.5` is not an integer guidance), a missing
required key or an input file that does not exist raises one `RecipeError` naming the file and the key.
Relative paths are resolved against the sample file's folder. `.json` only (no YAML parser is installed).
`num_output_frames` is accepted and, as in the official code, ignored: the frame count is the recipe's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cosmos_engine.config.schema import IMAGE_SUFFIXES, VIDEO_SUFFIXES, InferConfig
from cosmos_engine.errors import RecipeError

INFERENCE_TYPES = {"text2world": 0, "image2world": 1, "video2world": 2}

# key -> (expected type, required); None in a value means "null is accepted".
_TOP_KEYS: dict[str, tuple[Any, bool]] = {
    "inference_type": (str, True),
    "samples": (dict, True),
    "negative_prompt": (str, False),
    "seed": (int, False),
    "guidance": (int, False),
    "resolution": (str, False),
    "num_output_frames": (int, False),
}
_SAMPLE_KEYS: dict[str, tuple[Any, bool]] = {
    "prompt": ((str, type(None)), False),
    "prompt_path": ((str, type(None)), False),
    "input_path": ((str, type(None)), False),
}
_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object"}


def _type_ok(value: Any, expected: Any) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _describe(expected: Any) -> str:
    if isinstance(expected, tuple):
        return " or ".join("null" if t is type(None) else _TYPE_NAMES[t] for t in expected)
    return _TYPE_NAMES[expected]


def _check_keys(where: str, prefix: str, raw: dict[str, Any], keys: dict[str, tuple[Any, bool]]) -> None:
    for key, value in raw.items():
        if key not in keys:
            raise RecipeError(f"{where}: unknown key {prefix}{key} (valid keys: {', '.join(keys)})")
        expected = keys[key][0]
        if not _type_ok(value, expected):
            raise RecipeError(f"{where}: {prefix}{key} = {value!r} is invalid: expected {_describe(expected)}")
    for key, (_, required) in keys.items():
        if required and key not in raw:
            raise RecipeError(f"{where}: missing required key {prefix}{key}")


def _existing_file(where: str, key: str, folder: Path, value: str) -> Path:
    path = Path(value).expanduser()
    relative = not path.is_absolute()
    path = folder / path if relative else path
    if not path.is_file():
        how = "; relative paths start at the sample file's folder" if relative else ""
        raise RecipeError(f"{where}: {key} = {value!r}: file not found ({path}{how})")
    return path.resolve()


def _read_prompt(where: str, key: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{where}: {key}: {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RecipeError(f"{where}: {key}: cannot read {path} ({exc.strerror})") from None


def _resolution(where: str, text: str) -> tuple[int, int] | None:
    if text == "none":
        return None
    try:
        height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise RecipeError(f"{where}: resolution = {text!r} is invalid: expected \"none\" or \"H,W\" such as "
                          "\"704,1280\"") from None
    if height < 16 or width < 16 or height % 16 or width % 16:
        raise RecipeError(f"{where}: resolution = {text!r} is invalid: height and width must be multiples of 16")
    return height, width


def load_sample_file(path: str | Path, base: InferConfig | None = None) -> dict[str, InferConfig]:
    """sample name -> the InferConfig of that sample (`base` with the file's values), in file order."""
    path = Path(path).absolute()
    where = str(path)
    base = base or InferConfig()
    if path.suffix.lower() != ".json":
        raise RecipeError(f"{where}: expected a .json sample file (YAML sample files are not supported)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{where}: sample file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{where}: is a folder, expected a JSON sample file") from None
    except OSError as exc:
        raise RecipeError(f"{where}: cannot read the sample file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{where}: not a UTF-8 text file (byte {exc.start}); expected JSON") from None
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a JSON object with inference_type and samples, got {type(raw).__name__}")
    _check_keys(where, "", raw, _TOP_KEYS)
    kind = raw["inference_type"]
    if kind not in INFERENCE_TYPES:
        raise RecipeError(f"{where}: inference_type = {kind!r} is invalid: expected one of "
                          + ", ".join(repr(k) for k in INFERENCE_TYPES))
    guidance = raw.get("guidance", 7)
    if not 0 <= guidance <= 7:
        raise RecipeError(f"{where}: guidance = {guidance!r} is invalid: expected an integer from 0 to 7")
    seed = raw.get("seed", 1)
    if not 0 <= seed < 2**32:
        raise RecipeError(f"{where}: seed = {seed!r} is invalid: expected an integer from 0 to 2**32 - 1")
    if raw.get("num_output_frames", 1) < 1:
        raise RecipeError(f"{where}: num_output_frames = {raw['num_output_frames']!r} is invalid: expected a positive integer")
    size = _resolution(where, raw.get("resolution", "none"))
    samples = raw["samples"]
    if not samples:
        raise RecipeError(f"{where}: samples is empty: expected at least one sample")
    folder = path.parent
    # Keys the file leaves out keep the recipe's value (whose defaults are the official ones: seed 1, guidance 7).
    common: dict[str, Any] = {"num_conditional_frames": INFERENCE_TYPES[kind]}
    if "seed" in raw:
        common["seed"] = seed
    if "guidance" in raw:
        common["guidance"] = float(guidance)
    if "negative_prompt" in raw:
        common["negative_prompt"] = raw["negative_prompt"]
    if size is not None:
        common["height"], common["width"] = size
    out: dict[str, InferConfig] = {}
    for name, sample in samples.items():
        prefix = f"samples.{name}."
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise RecipeError(f"{where}: samples.{name!r} is not a usable file name")
        if not isinstance(sample, dict):
            raise RecipeError(f"{where}: samples.{name} = {sample!r} is invalid: expected an object")
        _check_keys(where, prefix, sample, _SAMPLE_KEYS)
        prompt = sample.get("prompt")
        if sample.get("prompt_path") is not None:
            prompt_file = _existing_file(where, prefix + "prompt_path", folder, sample["prompt_path"])
            prompt = _read_prompt(where, prefix + "prompt_path", prompt_file)
        if prompt is None:
            raise RecipeError(f"{where}: {prefix}prompt is missing: give prompt or prompt_path")
        values = dict(common, prompt=prompt, name=name, input_path="")
        input_path = sample.get("input_path")
        if kind == "text2world":
            if input_path is not None:
                raise RecipeError(f"{where}: {prefix}input_path is given but inference_type is 'text2world' "
                                  "(use image2world or video2world to condition on it)")
        else:
            if input_path is None:
                raise RecipeError(f"{where}: {prefix}input_path is missing: {kind} needs an input image or video")
            if not input_path.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES):
                raise RecipeError(f"{where}: {prefix}input_path = {input_path!r} is invalid: expected an image "
                                  f"({' '.join(IMAGE_SUFFIXES)}) or a video ({' '.join(VIDEO_SUFFIXES)})")
            values["input_path"] = str(_existing_file(where, prefix + "input_path", folder, input_path))
        out[name] = dataclasses.replace(base, **values)
    return out


def inference_type(cfg: InferConfig) -> str:
    """"text2world", "image2world" or "video2world" for a config's number of condition frames."""
    return {v: k for k, v in INFERENCE_TYPES.items()}[cfg.num_conditional_frames]


__all__ = ["IMAGE_SUFFIXES", "INFERENCE_TYPES", "VIDEO_SUFFIXES", "inference_type", "load_sample_file"]
