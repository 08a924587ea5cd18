"""Strict recipe loading: TOML file + `--set table.key=value` overrides -> a frozen `Recipe`.

Every mistake raises `RecipeError` naming the file (or the --set override), `table.key`, the value
received and what was expected, with the closest valid name when a name is unknown. Nothing is
silently ignored or coerced: 1 is not accepted for a bool, "3" not for an int.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any

from cosmos_engine.atomic import atomic_write
from cosmos_engine.config import schema
from cosmos_engine.errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def _suggest(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _describe(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(expected))
    if origin is tuple:
        items = typing.get_args(expected)
        if items[-1] is Ellipsis:
            return f"a list of {_describe(items[0]).removeprefix('a ')}s"
        return f"a list of {len(items)} numbers"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[expected]


def _check_value(where: str, key: str, value: Any, expected: Any, meta: dict) -> Any:
    """Return value converted to the field's Python type, or raise RecipeError."""

    def fail(what: str) -> typing.NoReturn:
        raise RecipeError(f"{where}: {key} = {value!r} is invalid: {what}")

    origin = typing.get_origin(expected)
    if origin is typing.Literal:
        choices = typing.get_args(expected)
        if not isinstance(value, str) or value not in choices:
            fail(f"expected {_describe(expected)}" + (_suggest(value, choices) if isinstance(value, str) else ""))
        return value
    if origin is tuple:
        items = typing.get_args(expected)
        if items[-1] is Ellipsis and isinstance(value, list):  # any length, one item type
            items = (items[0],) * len(value)
        if not isinstance(value, list) or len(value) != len(items):
            fail(f"expected {_describe(expected)}")
        return tuple(_check_value(where, f"{key}[{i}]", v, t, meta) for i, (v, t) in enumerate(zip(value, items)))
    if expected is bool:
        if not isinstance(value, bool):
            fail("expected true or false")
        return value
    if expected is str:
        if not isinstance(value, str):
            fail("expected a string")
        return _expand_path(where, key, value) if meta.get("path") else value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("expected an integer")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("expected a number")
        if not math.isfinite(value):
            fail("expected a finite number")
        value = float(value)
    else:  # a schema field of a type this loader does not know is a bug, not a user error
        raise TypeError(f"recipe field {key} has unsupported type {expected!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        fail(f"expected a value >= {lo}")
    if hi is not None and value > hi:
        fail(f"expected a value <= {hi}")
    return value


_VARIABLE = re.compile(r"\$(\w+)|\$\{([^}]*)\}")


def _expand_path(where: str, key: str, value: str) -> str:
    """`~` and $VARIABLE / ${VARIABLE} expanded. An unset variable is an error: left as text it would
    silently become a folder named '$VARIABLE'."""
    for match in _VARIABLE.finditer(value):
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise RecipeError(f"{where}: {key} = {value!r} is invalid: the environment variable ${name} is not set")
    return os.path.expanduser(os.path.expandvars(value))


def _build_table(where: str, table: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            other = [t for t, c in schema.tables().items() if key in {f.name for f in dataclasses.fields(c)}]
            hint = f"; '{key}' belongs in [{other[0]}]" if other else _suggest(key, fields)
            raise RecipeError(f"{where}: unknown key {table}.{key}{hint} (valid keys of [{table}]: {', '.join(fields)})")
        kwargs[key] = _check_value(where, f"{table}.{key}", value, hints[key], dict(fields[key].metadata))
    return cls(**kwargs)


def _validate(recipe: schema.Recipe, where: typing.Callable[[str], str]) -> None:
    """Rules that involve the value more than its type. `where("table.key")` names the value's source."""
    _check_video_size("data", recipe.data, where)
    for key in ("project", "group", "name"):  # each is one level of the run folder, which must stay under the root
        value = getattr(recipe.job, key)
        if value in ("", ".", "..") or "/" in value:
            raise RecipeError(f"{where('job.' + key)}: job.{key} = {value!r} is invalid: expected a plain folder name "
                              "(not empty, not '.' or '..', no '/')")
    validate_infer(recipe.infer, where)
    _validate_lora(recipe.lora, where)
    probs = recipe.train.conditional_frames_probs
    if abs(sum(probs) - 1.0) > 1e-6:
        raise RecipeError(f"{where('train.conditional_frames_probs')}: train.conditional_frames_probs = "
                          f"{list(probs)} is invalid: the probabilities of 0, 1 and 2 condition frames must sum to 1")


def _validate_lora(cfg: schema.LoraConfig, where: typing.Callable[[str], str]) -> None:
    """The [lora] rules beyond types; whether the targets name layers of the DiT is checked where the DiT is
    built (models/lora.py), since this leaf package imports no model code."""
    if cfg.alpha <= 0:
        raise RecipeError(f"{where('lora.alpha')}: lora.alpha = {cfg.alpha} is invalid: expected a value > 0")
    if cfg.dropout:
        # PEFT's dropout draws from the global RNG, which no (seed, step, sample) stream drives or checkpoints.
        raise RecipeError(f"{where('lora.dropout')}: lora.dropout = {cfg.dropout} is not supported yet: expected 0 "
                          "(the official value); adapter dropout would make a resumed run differ from an "
                          "uninterrupted one")
    if not cfg.target_modules:
        raise RecipeError(f"{where('lora.target_modules')}: lora.target_modules is empty: name at least one layer, "
                          f"e.g. {list(schema.OFFICIAL_LORA_TARGETS)}")
    for name in cfg.target_modules:
        if not name or name != name.strip() or name.startswith(".") or name.endswith(".") or ".." in name:
            raise RecipeError(f"{where('lora.target_modules')}: lora.target_modules entry {name!r} is invalid: "
                              "expected a layer name such as 'q_proj' or 'mlp.layer1'")


def _check_video_size(table: str, cfg: schema.DataConfig | schema.InferConfig,
                      where: typing.Callable[[str], str]) -> None:
    """num_frames, height and width of a [data] or [infer] table, as the VAE and the patching need them."""
    if cfg.num_frames % 4 != 1:
        raise RecipeError(f"{where(table + '.num_frames')}: {table}.num_frames = {cfg.num_frames} is invalid: the "
                          "causal VAE needs 1 + 4k frames (e.g. 93)")
    for key in ("height", "width"):
        if getattr(cfg, key) % 16:
            raise RecipeError(f"{where(table + '.' + key)}: {table}.{key} = {getattr(cfg, key)} is invalid: "
                              "expected a multiple of 16 (8x VAE downsampling, then 2x2 patches)")


def validate_infer(cfg: schema.InferConfig, where: typing.Callable[[str], str]) -> None:
    """The rules of an [infer] table that involve more than one value's type (files are not looked at:
    a recipe may name inputs made later); RecipeError naming the key."""
    _check_video_size("infer", cfg, where)
    latent_frames = 1 + (cfg.num_frames - 1) // 4
    conditional = where("infer.num_conditional_frames")
    if cfg.num_conditional_frames > latent_frames:
        raise RecipeError(f"{conditional}: infer.num_conditional_frames = {cfg.num_conditional_frames} is invalid: the "
                          f"video has only {latent_frames} latent frames")
    if cfg.num_conditional_frames == 0 and cfg.input_path:
        raise RecipeError(f"{conditional}: infer.input_path = {cfg.input_path!r} is given but "
                          "infer.num_conditional_frames = 0 (text2world); set 1 (image2world) or 2 (video2world) to "
                          "condition on it")
    if cfg.num_conditional_frames > 0:
        if not cfg.input_path:
            raise RecipeError(f"{conditional}: infer.input_path is empty but infer.num_conditional_frames = "
                              f"{cfg.num_conditional_frames}: give the conditioning image or video")
        if not cfg.input_path.lower().endswith(schema.IMAGE_SUFFIXES + schema.VIDEO_SUFFIXES):
            raise RecipeError(f"{where('infer.input_path')}: infer.input_path = {cfg.input_path!r} is invalid: expected "
                              f"an image ({' '.join(schema.IMAGE_SUFFIXES)}) or a video "
                              f"({' '.join(schema.VIDEO_SUFFIXES)})")
    if not cfg.name or "/" in cfg.name or cfg.name.startswith("."):
        raise RecipeError(f"{where('infer.name')}: infer.name = {cfg.name!r} is invalid: expected a plain file stem")
    for spec in cfg.lora:
        split_lora_spec(spec, where("infer.lora"))


def split_lora_spec(spec: str, where: str) -> tuple[str, float]:
    """'PATH[:SCALE]' -> (PATH, SCALE), scale 1.0 when absent. A last ':' part that is not a number belongs to
    the path. RecipeError naming `where` for an empty path or a non-finite scale."""
    path, scale = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep:
        try:
            path, scale = head, float(tail)
        except ValueError:
            pass
    if not path or not math.isfinite(scale):
        raise RecipeError(f"{where}: LoRA adapter {spec!r} is invalid: expected PATH or PATH:SCALE with a finite "
                          "number as SCALE, e.g. runs/robot/lora_adapter:0.8")
    return path, scale


def parse_override(text: str) -> tuple[str, str, Any]:
    """'table.key=value' -> (table, key, value). The value is read as TOML ('2', 'true', '"s"', '[1, 2]'),
    and as a plain string when it is not valid TOML (so --set job.name=run3 works)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise RecipeError(f"--set {text!r}: expected table.key=value, e.g. --set train.max_steps=20")
    path, raw = text.split("=", 1)
    table, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return table, key, value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not a UTF-8 text file (byte {exc.start}); expected a TOML recipe") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None


def load_recipe(path: str | os.PathLike | None, overrides: typing.Sequence[str] = ()) -> schema.Recipe:
    """Read a recipe file (None: all defaults), apply `table.key=value` overrides, validate."""
    where = str(path) if path is not None else "<defaults>"
    raw = _read_toml(Path(path)) if path is not None else {}
    tables = schema.tables()
    for table, content in raw.items():
        if table not in tables:
            raise RecipeError(f"{where}: unknown table [{table}]{_suggest(table, tables)} (valid tables: {', '.join(tables)})")
        if not isinstance(content, dict):
            raise RecipeError(f"{where}: '{table}' must be a table ([{table}]), got {content!r}")
    merged = {name: dict(raw.get(name, {})) for name in tables}
    sources: dict[str, str] = {}  # "table.key" -> the --set that gave it its value
    for text in overrides:
        table, key, value = parse_override(text)
        origin = f"--set {text}"
        if table not in tables:
            raise RecipeError(f"{origin}: unknown table [{table}]{_suggest(table, tables)} (valid tables: {', '.join(tables)})")
        _build_table(origin, table, tables[table], {key: value})  # checks the override on its own
        merged[table][key] = value
        sources[f"{table}.{key}"] = origin
    built = {name: _build_table(where, name, cls, merged[name]) for name, cls in tables.items()}
    recipe = schema.Recipe(**built)
    _validate(recipe, lambda dotted: sources.get(dotted, where))
    return recipe


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(recipe: schema.Recipe) -> str:
    lines = []
    for table in schema.tables():
        lines.append(f"[{table}]")
        for key, value in dataclasses.asdict(getattr(recipe, table)).items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def write_resolved(recipe: schema.Recipe, run_dir: str | os.PathLike) -> Path:
    """Write the fully resolved recipe to run_dir/recipe.toml (atomically) and return its path."""
    target = Path(run_dir) / "recipe.toml"
    atomic_write(target, to_toml(recipe))
    return target
