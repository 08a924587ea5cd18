"""The Video2World inference pipeline on the tiny flavor: files written, seeds reproduce, condition frames kept,
sample files validated as strictly as recipes (one line naming the key or file, exit status 2)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from cosmos_engine import cli
from cosmos_engine.config import load_recipe
from cosmos_engine.config.schema import InferConfig
from cosmos_engine.data.video_io import write_video
from cosmos_engine.errors import RecipeError
from cosmos_engine.infer import pipeline
from cosmos_engine.infer.sample_files import load_sample_file

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny_infer.toml"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny tensors gain nothing from a second thread, and on a shared 2-core machine OpenMP threads that
    wait for a descheduled sibling make these tests 5x slower; one thread keeps them ~20 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A random tiny DiT in the converted layout ({'net.<k>': tensor}), as `convert` writes model.pt."""
    from cosmos_engine.models.flavors import dit_config
    from cosmos_engine.models.state_dict import build_dit

    folder = tmp_path_factory.mktemp("ckpt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_dit(dit_config("tiny"))
    path = folder / "model.pt"
    torch.save({"net." + k: v for k, v in net.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """An 80x96 PNG (another aspect than the output, so resize + crop run) and a 9-frame MP4."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    image = np.zeros((80, 96, 3), dtype=np.uint8)
    image[:, :48] = (200, 30, 30)
    image[:, 48:] = (20, 40, 220)
    png = folder / "in.png"
    png.write_bytes(pipeline.png_bytes(image))
    frames = rng.integers(0, 255, size=(9, 64, 112, 3), dtype=np.uint8)
    mp4 = folder / "in.mp4"
    write_video(mp4, frames, 16.0)
    return {"png": png, "mp4": mp4}


def _recipe(ckpt: Path, out: Path, *overrides: str):
    return load_recipe(TINY, [f"infer.checkpoint_path={ckpt}", f"infer.output_dir={out}", *overrides])


def test_tiny_text2world_writes_mp4_and_preview_and_reproduces(ckpt, tmp_path):
    recipe = _recipe(ckpt, tmp_path)
    assert recipe.infer.num_steps == 35 and recipe.infer.guidance == 7.0
    # Three samples of one run (one model load): the recipe's, the same seed again, another seed.
    samples = {"tiny_robot": recipe.infer, "again": recipe.infer, "other": dataclasses.replace(recipe.infer, seed=2)}
    first, second, third = pipeline.run_infer(recipe.model, samples, progress=False)
    assert first.video_path == tmp_path / "tiny_robot.mp4" and first.video_path.is_file()
    with av.open(str(first.video_path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert float(stream.average_rate) == pytest.approx(16.0)
    assert len(decoded) == 17 and decoded[0].shape == (64, 112, 3)
    png = first.preview_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and first.preview_path.name == "tiny_robot.png"
    with av.open(str(first.preview_path)) as container:  # 4 frames side by side, first and last included
        strip = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert np.array_equal(strip, np.concatenate([first.frames[i] for i in (0, 5, 11, 16)], axis=1))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "again.mp4", "again.png", "other.mp4", "other.png", "tiny_robot.mp4", "tiny_robot.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # Same seed: the same latent and frames, bit for bit; another seed: another video.
    assert torch.equal(first.latent, second.latent) and np.array_equal(first.frames, second.frames)
    assert not torch.equal(third.latent, first.latent)


def test_cached_prompts_and_negative_prompt_load_no_text_encoder(ckpt, tmp_path, monkeypatch):
    from cosmos_engine.models import text_encoder

    built = []
    original = text_encoder.TextEncoder.__init__
    monkeypatch.setattr(text_encoder.TextEncoder, "__init__",
                        lambda self, *args, **kwargs: (built.append(args), original(self, *args, **kwargs))[1])
    recipe = _recipe(ckpt, tmp_path, "infer.num_steps=1", "infer.num_frames=1")
    pipeline.run_infer(recipe.model, recipe.infer, progress=False)
    assert len(built) == 1 and len(list((tmp_path / ".cache" / "text").glob("*.safetensors"))) == 2
    pipeline.run_infer(recipe.model, recipe.infer, progress=False)
    assert len(built) == 1  # the prompt and the negative prompt came from the cache


def test_image2world_keeps_the_condition_frame(ckpt, inputs, tmp_path):
    from cosmos_engine.data.encoders import build_vae

    recipe = _recipe(ckpt, tmp_path, "infer.num_conditional_frames=1", f"infer.input_path={inputs['png']}",
                     "infer.num_steps=8", "infer.name=i2w")
    (result,) = pipeline.run_infer(recipe.model, recipe.infer, progress=False)
    assert result.frames.shape == (17, 64, 112, 3)
    pixels = pipeline.condition_pixels(recipe.infer)
    assert pixels.shape == (3, 1, 64, 112)
    # 80x96 -> scale 112/96 -> 94x112 -> centre crop rows 15..78: left half red, right half blue.
    assert pixels[:, 0, 32, 10].tolist() == [200, 30, 30] and pixels[:, 0, 32, 100].tolist() == [20, 40, 220]
    x0 = build_vae(recipe.model, torch.device("cpu")).encode(pixels[None].float() / 127.5 - 1)
    assert (result.latent[:, :, :1] - x0).abs().max() < 2e-3  # the condition latent frame is reproduced
    assert (result.latent[:, :, 1:2] - x0).abs().max() > 0.1


def test_video2world_from_a_sample_file_through_the_cli(ckpt, inputs, tmp_path, capsys):
    sample = {"inference_type": "video2world", "seed": 0, "guidance": 3, "num_output_frames": 93,
              "resolution": "64,112", "samples": {"v2w": {"prompt": "A robot.", "input_path": str(inputs["mp4"])}}}
    path = tmp_path / "samples.json"
    path.write_text(json.dumps(sample))
    out = tmp_path / "out"
    code = cli.main(["infer", str(path), "--recipe", str(TINY), "--checkpoint-path", str(ckpt), "--output-dir", str(out),
                     "--set", "infer.num_steps=4", "--no-progress"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out / "v2w.mp4")
    with av.open(str(out / "v2w.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 17
    cfg = load_sample_file(path, load_recipe(TINY).infer)["v2w"]
    assert (cfg.num_conditional_frames, cfg.seed, cfg.guidance) == (2, 0, 3.0)
    pixels = pipeline.condition_pixels(cfg)
    assert pixels.shape == (3, 5, 64, 112)  # the last 5 of the 9 input frames


@pytest.mark.parametrize("change, expected", [
    ({"guidanse": 7}, "unknown key guidanse"),
    ({"guidance": 7.5}, "guidance = 7.5 is invalid"),
    ({"guidance": 9}, "guidance = 9 is invalid"),
    ({"seed": True}, "seed = True is invalid"),
    ({"inference_type": "img2world"}, "inference_type = 'img2world' is invalid"),
    ({"resolution": "64x112"}, "resolution = '64x112' is invalid"),
    ({"samples": {"a": {"prompt": "x", "input_path": "missing.png"}}}, "samples.a.input_path = 'missing.png': file not found"),
    ({"samples": {"a": {"prompt": "x"}}}, "samples.a.input_path is missing"),
    ({"samples": {"a": {"prompt": "x", "input_pth": "in.png"}}}, "unknown key samples.a.input_pth"),
    ({"samples": {"a": {"prompt": 3, "input_path": "in.png"}}}, "samples.a.prompt = 3 is invalid"),
    ({"samples": {"a": {"prompt": "x", "input_path": "in.gif"}}}, "samples.a.input_path = 'in.gif' is invalid"),
    ({"samples": None}, "samples = None is invalid"),
])
def test_bad_sample_files_fail_with_one_line(change, expected, inputs, tmp_path, capsys):
    (tmp_path / "in.png").write_bytes(inputs["png"].read_bytes())
    (tmp_path / "in.gif").write_bytes(b"GIF89a")
    sample = {"inference_type": "image2world", "samples": {"a": {"prompt": "x", "input_path": "in.png"}}}
    sample.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(sample))
    assert cli.main(["infer", str(path), "--recipe", str(TINY), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and expected in err, err


def test_missing_inputs_and_bad_tables_fail_with_one_line(ckpt, tmp_path, capsys):
    cases = [
        (["--set", "infer.num_conditional_frames=1", "--set", "infer.input_path=/nonexistent/in.png"],
         "infer.input_path = '/nonexistent/in.png': file not found"),
        (["--set", "infer.num_conditional_frames=1"], "infer.input_path is empty"),
        (["--set", "infer.num_frames=16"], "infer.num_frames = 16 is invalid"),
        (["--set", "infer.guidance=high"], "infer.guidance = 'high' is invalid"),
        (["--set", "infer.promt=x"], "unknown key infer.promt"),
        (["--checkpoint-path", str(tmp_path / "nope.pt")], "nope.pt"),
        (["--set", f"infer.checkpoint_path={tmp_path / 'gone.pt'}"], "gone.pt: no such checkpoint"),
    ]
    for extra, expected in cases:
        code = cli.main(["infer", str(TINY), "--set", f"infer.output_dir={tmp_path}", "--no-progress", *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and expected in err, (extra, err)
    assert not list(tmp_path.glob("*.mp4"))


def test_sample_file_values_override_the_recipe_and_resolve_paths(inputs, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "prompt.txt").write_text("  A teal robot.\n")
    (tmp_path / "sub" / "in.png").write_bytes(inputs["png"].read_bytes())
    path = tmp_path / "sub" / "s.json"
    path.write_text(json.dumps({"inference_type": "image2world", "negative_prompt": "bad",
                                "samples": {"one": {"prompt_path": "prompt.txt", "input_path": "in.png"},
                                            "two": {"prompt": "B", "input_path": str(tmp_path / "sub" / "in.png")}}}))
    base = InferConfig(num_frames=17, fps=24.0, seed=5)
    got = load_sample_file(path, base)
    assert list(got) == ["one", "two"]
    one = got["one"]
    assert one.prompt == "A teal robot." and one.negative_prompt == "bad" and one.input_path == str(tmp_path / "sub" / "in.png")
    assert (one.seed, one.guidance, one.num_frames, one.fps, one.name, one.height) == (5, 7.0, 17, 24.0, "one", 704)
    with pytest.raises(RecipeError, match="expected a .json"):
        load_sample_file(tmp_path / "s.yaml", base)


def test_shipped_recipes_and_example_sample_file_validate():
    assert load_recipe(TINY).infer.num_steps == 35
    nemo = load_recipe(REPO / "recipes" / "nemo_infer.toml")
    assert (nemo.model.flavor, nemo.infer.num_frames, nemo.infer.num_conditional_frames) == ("2b", 93, 1)
    raw = json.loads((REPO / "recipes" / "nemo_image2world.json").read_text())
    assert set(raw) == {"inference_type", "seed", "guidance", "num_output_frames", "resolution", "samples"}
    with pytest.raises(RecipeError, match="input_path"):  # the example's image is the user's to supply
        load_sample_file(REPO / "recipes" / "nemo_image2world.json", nemo.infer)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["branches", "context"])
def test_two_ranks_match_one_process(ckpt, tmp_path, mode):
    """torchrun, 2 ranks (gloo). "branches": rank 0 runs the conditional branch, rank 1 the unconditional
    one. "context" (--context-parallel): each rank runs its half of the latent frames, self-attention
    exchanging heads and tokens. Either way the video equals the one-process result within float rounding."""
    import subprocess
    import sys

    frames = ["--set", "infer.num_frames=13"]  # 4 latent frames: 2 per rank

    def infer(out: Path, launcher: list[str], *extra: str) -> subprocess.CompletedProcess:
        args = [*launcher, "-m", "cosmos_engine.cli", "infer", str(TINY), "--set", f"infer.checkpoint_path={ckpt}",
                "--set", f"infer.output_dir={out}", "--set", "infer.num_steps=8", "--no-progress", *frames, *extra]
        return subprocess.run(args, capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})

    def strip(out: Path) -> np.ndarray:
        with av.open(str(out / "tiny_robot.png")) as container:  # the lossless strip of decoded frames
            return next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    extra = ["--context-parallel"] if mode == "context" else []
    single, split = infer(tmp_path / "one", [sys.executable]), infer(tmp_path / "two", torchrun, *extra)
    for result in (single, split):
        assert result.returncode == 0, result.stderr[-3000:]
    said = {"branches": "conditional / unconditional branch per rank", "context": "latent frames split over all ranks"}
    assert said[mode] in split.stderr
    one, two = strip(tmp_path / "one"), strip(tmp_path / "two")
    assert two.shape == one.shape == (64, 4 * 112, 3)
    # The latents differ by float rounding only (other GEMM shapes), which can move a pixel across a uint8
    # truncation boundary: at most one level (seen: 1 level max, 5e-5 mean).
    assert np.abs(two - one).max() <= 1
    if mode == "context":  # 17 frames = 5 latent frames cannot be split over 2 ranks: a clear error
        frames = []
        refused = infer(tmp_path / "odd", torchrun, "--context-parallel")
        assert refused.returncode != 0 and "5 latent frames" in refused.stderr


def test_non_finite_dit_weights_fail_before_sampling(ckpt, tmp_path, capsys):
    state = torch.load(ckpt, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    state[key].view(-1)[0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    out = tmp_path / "out"
    code = cli.main(["infer", str(TINY), "--checkpoint-path", str(bad), "--output-dir", str(out), "--no-progress"])
    # The text encoder and VAE are built first, and their progress and log lines come before the error line.
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("cosmos-engine infer: error: ")]
    assert code == 2 and len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    assert f"error: {bad}: DiT tensor '{key.removeprefix('net.')}' holds 1 non-finite values (NaN/Inf)" in errors[0]
    assert not list(out.glob("*.mp4"))
