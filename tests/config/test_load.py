"""The strict recipe loader: every mistake is a RecipeError naming the file and table.key."""

from __future__ import annotations

import dataclasses
import math
import re
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosmos_engine.config import Recipe, load_recipe, write_resolved
from cosmos_engine.config import schema
from cosmos_engine.config.load import to_toml
from cosmos_engine.errors import RecipeError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str | bytes, name: str = "recipe.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_load(recipe):
    assert isinstance(load_recipe(recipe), Recipe)


def test_defaults_are_the_official_values():
    r = load_recipe(None)
    assert r.train.lr == 2**-14.5 and r.train.betas == (0.9, 0.999) and r.train.weight_decay == 1e-3
    assert r.train.grad_clip == 0.1 and r.data.num_frames == 93 and (r.data.height, r.data.width) == (704, 1280)
    assert (r.job.project, r.job.group, r.job.name) == ("cosmos_predict_v2p5", "video2world", "2b_cosmos_nemo_assets")


@pytest.mark.parametrize(
    "text, match",
    [
        ("[train]\nmax_step = 3\n", r"unknown key train.max_step; did you mean 'max_steps'\?"),
        ("[trian]\nmax_steps = 3\n", r"unknown table \[trian\]; did you mean 'train'\?"),
        ("[model]\nnum_frames = 93\n", r"unknown key model.num_frames; 'num_frames' belongs in \[data\]"),
        ("[train]\nmax_steps = \"3\"\n", r"train.max_steps = '3' is invalid: expected an integer"),
        ("[train]\nmax_steps = 2.5\n", r"train.max_steps = 2.5 is invalid: expected an integer"),
        ("[train]\nema = 1\n", r"train.ema = 1 is invalid: expected true or false"),
        ("[train]\nlr = true\n", r"train.lr = True is invalid: expected a number"),
        ("[train]\nlr = nan\n", r"train.lr = nan is invalid: expected a finite number"),
        ("[train]\nlr = -1.0\n", r"train.lr = -1.0 is invalid: expected a value >= 0.0"),
        ("[train]\nmax_steps = 0\n", r"train.max_steps = 0 is invalid: expected a value >= 1"),
        ("[train]\nbetas = [0.9]\n", r"train.betas = \[0.9\] is invalid: expected a list of 2 numbers"),
        ("[train]\nbetas = [0.9, 2.0]\n", r"train.betas\[1\] = 2.0 is invalid: expected a value <= 1.0"),
        ("[model]\nflavor = \"tiyn\"\n", r"model.flavor = 'tiyn' is invalid: expected one of '2b', 'tiny'; did you mean 'tiny'\?"),
        ("[data]\nnum_frames = 92\n", r"data.num_frames = 92 is invalid: the causal VAE needs 1 \+ 4k frames"),
        ("[data]\nheight = 100\n", r"data.height = 100 is invalid: expected a multiple of 16"),
        ("train = 3\n", r"'train' must be a table"),
        ("[train\nmax_steps = 3\n", r"not valid TOML"),
    ],
)
def test_mistakes_name_file_and_key(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError, match=match) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(RecipeError, match=r"nope.toml: recipe file not found"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(RecipeError, match=r"not a UTF-8 text file"):
        load_recipe(write(tmp_path, b"\xff\xfe\x00garbage"))


def test_overrides(tmp_path):
    path = write(tmp_path, "[train]\nmax_steps = 3\n")
    r = load_recipe(path, ["train.max_steps=7", "job.name=run3", "train.betas=[0.8, 0.99]", "model.vae_tiled=true"])
    assert (r.train.max_steps, r.job.name, r.train.betas, r.model.vae_tiled) == (7, "run3", (0.8, 0.99), True)
    with pytest.raises(RecipeError, match=r"--set train.max_step=7: unknown key train.max_step; did you mean 'max_steps'"):
        load_recipe(path, ["train.max_step=7"])
    with pytest.raises(RecipeError, match=r"--set train.ema=yes: train.ema = 'yes' is invalid: expected true or false"):
        load_recipe(path, ["train.ema=yes"])
    with pytest.raises(RecipeError, match=r"expected table.key=value"):
        load_recipe(path, ["max_steps=7"])


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(REPO / "recipes" / "tiny_posttrain.toml", ["train.max_steps=5"])
    written = write_resolved(r, tmp_path / "run")
    assert written.name == "recipe.toml" and not list(written.parent.glob(".recipe.*"))
    assert load_recipe(written) == r


def test_every_field_is_documented():
    for cls in schema.tables().values():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no documentation"


# --- fuzz: anything at all is either a valid recipe or a RecipeError ----------------------------------

FIELDS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in schema.tables().items()}
toml_scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.just(10**30),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(-2, 2)), max_size=3),
)
table_names = st.one_of(st.sampled_from(list(FIELDS)), st.text(string.ascii_lowercase + "_", min_size=1, max_size=8))


@st.composite
def recipes(draw):
    tables = {}
    for table in draw(st.lists(table_names, max_size=5, unique=True)):
        keys = FIELDS.get(table, []) + ["bogus", "max_step", "seed"]
        chosen = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
        tables[table] = {k: draw(toml_scalars) for k in chosen}
    return tables


def render(tables: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
        if isinstance(v, str):
            return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    return "".join(f"[{t}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in kv.items()) for t, kv in tables.items())


def assert_valid_or_recipe_error(path):
    try:
        r = load_recipe(path)
    except RecipeError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(r, Recipe)
    load_recipe(write_resolved(r, path.parent / "resolved"))  # a valid result writes back loadable


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables=recipes())
def test_fuzz_structured(tmp_path, tables):
    assert_valid_or_recipe_error(write(tmp_path, render(tables)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_garbage_bytes(tmp_path, data):
    assert_valid_or_recipe_error(write(tmp_path, data))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=0, max_size=20), value=st.text(max_size=20))
def test_fuzz_overrides(tmp_path, key, value):
    try:
        r = load_recipe(None, [f"{key}={value}"])
    except RecipeError:
        return
    assert isinstance(r, Recipe)


def test_rendered_defaults_are_valid_toml():
    assert load_recipe(None) == Recipe()
    assert "[checkpoint]" in to_toml(Recipe())


@pytest.mark.parametrize(("override", "message"), [
    ("lora.alpha=0", r"lora.alpha = 0.0 is invalid: expected a value > 0"),
    ("lora.dropout=0.1", r"lora.dropout = 0.1 is not supported yet: expected 0"),
    ("lora.target_modules=[]", r"lora.target_modules is empty"),
    ('lora.target_modules=["q_proj", ""]', r"lora.target_modules entry '' is invalid"),
    ("lora.target_modules=[1]", r"lora.target_modules\[0\] = 1 is invalid: expected a string"),
    ('lora.target_modules="q_proj"', r"expected a list of strings"),
    ("train.conditional_frames_probs=[0.5, 0.5, 0.5]", r"must sum to 1"),
    ('infer.lora=["a:inf"]', r"LoRA adapter 'a:inf' is invalid: expected PATH or PATH:SCALE"),
])
def test_lora_and_condition_frame_values_are_checked(override, message):
    with pytest.raises(RecipeError, match=f"^--set {re.escape(override)}: .*{message}"):
        load_recipe(None, [override])


def test_lora_lists_round_trip(tmp_path):
    r = load_recipe(None, ['lora.target_modules=["q_proj", "mlp.layer2"]', 'infer.lora=["a:0.5", "b"]'])
    assert r.lora.target_modules == ("q_proj", "mlp.layer2") and r.infer.lora == ("a:0.5", "b")
    assert load_recipe(write_resolved(r, tmp_path)) == r


def test_value_rule_errors_name_the_override(tmp_path):
    path = write(tmp_path, "[train]\nmax_steps = 3\n")
    with pytest.raises(RecipeError, match=r"^--set data.num_frames=16: data.num_frames = 16 is invalid"):
        load_recipe(path, ["data.num_frames=16"])


# --- paths: expansion, plain job names, the output root and the run folder --------------------------------------

PATH_KEYS = [f"{table}.{f.name}" for table, cls in schema.tables().items() for f in dataclasses.fields(cls)
             if f.metadata.get("path")]


def test_every_path_key_is_marked():
    assert sorted(PATH_KEYS) == sorted([
        "data.dataset_dir", "job.output_root", "model.checkpoint", "model.vae_path", "model.text_encoder_path",
        "infer.input_path", "infer.output_dir", "infer.checkpoint_path", "infer.lora"])


@pytest.mark.parametrize("key", PATH_KEYS)
def test_home_and_variables_are_expanded_in_every_path(key, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("COSMOS_TEST_DIR", "sub")
    table, name = key.split(".")
    extra = {"infer.input_path": "\nnum_conditional_frames = 1"}.get(key, "")
    value = '"~/$COSMOS_TEST_DIR/${COSMOS_TEST_DIR}.png"'
    listed = key == "infer.lora"  # a list of paths: each is expanded
    path = write(tmp_path, f'[{table}]\n{name} = {f"[{value}]" if listed else value}{extra}\n')
    got = getattr(getattr(load_recipe(path), table), name)
    assert got == ((f"{tmp_path}/sub/sub.png",) if listed else f"{tmp_path}/sub/sub.png")


def test_an_unset_variable_in_a_path_names_it(tmp_path, monkeypatch):
    monkeypatch.delenv("COSMOS_TEST_UNSET", raising=False)
    with pytest.raises(RecipeError, match=r"data.dataset_dir = '\$COSMOS_TEST_UNSET/d' is invalid: the environment "
                                          r"variable \$COSMOS_TEST_UNSET is not set"):
        load_recipe(None, ["data.dataset_dir=$COSMOS_TEST_UNSET/d"])


def test_relative_paths_stay_relative_to_the_working_directory():
    assert load_recipe(None, ["data.dataset_dir=datasets/x"]).data.dataset_dir == "datasets/x"


@pytest.mark.parametrize("key, value", [("name", "../../x"), ("name", ""), ("project", "."), ("group", ".."),
                                        ("name", "a/b"), ("group", "/abs")])
def test_job_names_must_be_plain_folder_names(key, value, tmp_path):
    path = write(tmp_path, f'[job]\n{key} = "{value}"\n')
    with pytest.raises(RecipeError, match=rf"{path}: job.{key} = {value!r} is invalid: expected a plain folder name"):
        load_recipe(path)


def test_the_infer_rules_apply_to_every_recipe(tmp_path):
    path = write(tmp_path, "[infer]\nnum_conditional_frames = 1\n")
    with pytest.raises(RecipeError, match=rf"{path}: infer.input_path is empty"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"^--set infer.height=40: infer.height = 40 is invalid"):
        load_recipe(None, ["infer.height=40"])


def test_output_root_precedence_and_run_folder(tmp_path, monkeypatch):
    from cosmos_engine.config.paths import DEFAULT_OUTPUT_ROOT, output_root, run_dir_for

    monkeypatch.delenv("IMAGINAIRE_OUTPUT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    job = schema.JobConfig(project="p", group="g", name="n")
    assert output_root() == output_root(job) == Path(DEFAULT_OUTPUT_ROOT)
    monkeypatch.setenv("IMAGINAIRE_OUTPUT_ROOT", "rel")  # relative: against the working directory, made absolute
    assert run_dir_for(job) == tmp_path / "rel" / "p" / "g" / "n"
    assert run_dir_for(dataclasses.replace(job, output_root=str(tmp_path / "mine"))) == tmp_path / "mine" / "p" / "g" / "n"


def test_an_empty_output_root_variable_is_an_error(monkeypatch):
    from cosmos_engine.config.paths import output_root

    monkeypatch.setenv("IMAGINAIRE_OUTPUT_ROOT", "")
    with pytest.raises(RecipeError, match=r"\$IMAGINAIRE_OUTPUT_ROOT is set but empty"):
        output_root()


def test_a_run_folder_behind_a_file_is_refused(tmp_path):
    from cosmos_engine.config.paths import run_dir_for

    (tmp_path / "file").write_text("x")
    job = schema.JobConfig(output_root=str(tmp_path / "file" / "runs"))
    with pytest.raises(RecipeError, match=rf"job.output_root = .*: cannot create the run folder .*{tmp_path}/file is a "
                                          "file, not a folder"):
        run_dir_for(job)
