"""The `cosmos-engine` command. Argument parsing only: each subcommand calls one library function.

A `UserError` (bad recipe, dataset, checkpoint...) is printed as one line on stderr and exits with
status 2, without a traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from collections.abc import Callable, Sequence

from cosmos_engine.errors import UserError

log = logging.getLogger("cosmos_engine")

# name -> (help, add_arguments, run); subcommands register here, in the order `--help` lists them.
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = (help, add_arguments, run)
        return run

    return register


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="TOML recipe file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="override one recipe value (repeatable), e.g. --set train.max_steps=20")


def _add_trust_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow arbitrary pickled objects in the checkpoint (only for checkpoints from a source "
                             "you trust)")


# ----------------------------------------------------------------------------------------------- info
@command("info", "print the build, the devices and the attention backend", lambda p: p.add_argument(
    "--json", action="store_true", help="print machine-readable JSON"))
def _info(args: argparse.Namespace) -> int:
    import torch

    from cosmos_engine import build_info
    from cosmos_engine.ops import _library
    from cosmos_engine.ops.attention import backend_name as attention_backend

    info = build_info()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    # Per visible GPU: its compute capability and the cubin/PTX of _C it runs (None: ops use the reference).
    gpus = [{"name": name, "capability": "%d.%d" % torch.cuda.get_device_capability(i),
             "kernel_image": _library.cuda_kernel_image(torch.cuda.get_device_capability(i))}
            for i, name in enumerate(devices)]
    # The attention implementation per visible device and dtype (head dim 128, the 2B model's).
    attn = {f"cpu {dtype}": attention_backend(torch.device("cpu"), getattr(torch, dtype))
            for dtype in ("float32", "bfloat16")}
    for i in range(len(devices)):
        for dtype in ("bfloat16", "float16", "float32"):
            attn[f"cuda:{i} {dtype}"] = attention_backend(torch.device("cuda", i), getattr(torch, dtype))
    report = {"build": info, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "cuda_devices": devices, "gpus": gpus, "cpu_threads": torch.get_num_threads(), "attention_backend": attn}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"cosmos-engine {__import__('cosmos_engine').__version__}")
    if info["loaded"]:
        print(f"  extension     {info['path']}")
        print(f"  built against torch {info['torch_version']}")
        print(f"  CUDA kernels  {'yes' if info['cuda'] else 'no'}: {info['cuda_reason']}")
        if info["cuda"]:
            print(f"  CUDA archs    {_library.cuda_archs_summary()}")
        for op, kernels in info["ops"].items():
            print(f"  op {op:<24} cpu={'yes' if kernels['cpu'] else 'no'} cuda={'yes' if kernels['cuda'] else 'no'}")
    else:
        print(f"  extension     not loaded: {info['why']} (ops use the PyTorch reference)")
    print(f"  torch         {torch.__version__} (CUDA {torch.version.cuda or 'none'}), {torch.get_num_threads()} CPU threads")
    print(f"  GPUs          {', '.join(devices) if devices else 'none'}")
    for i, gpu in enumerate(gpus):
        runs = (f"our CUDA kernels run ({gpu['kernel_image']})" if gpu["kernel_image"] else
                "our CUDA kernels do NOT run (" + ("no arch built for it" if info.get("cuda") else "none built")
                + "): ops use the PyTorch reference")
        print(f"  cuda:{i}        {gpu['name']} (compute capability {gpu['capability']}): {runs}")
    for key, name in attn.items():
        print(f"  attention     {key}: {name}")
    return 0


# ---------------------------------------------------------------------------------------------- check
@command("check", "validate a recipe and print it fully resolved", _add_recipe_arguments)
def _check(args: argparse.Namespace) -> int:
    from cosmos_engine.config import load_recipe
    from cosmos_engine.config.load import to_toml

    print(to_toml(load_recipe(args.recipe, args.overrides)), end="")
    return 0



# ----------------------------------------------------------------------------------------------- plan
def _plan_arguments(p: argparse.ArgumentParser) -> None:
    from cosmos_engine.plan import DEVICE_NAMES

    _add_recipe_arguments(p)
    p.add_argument("--gpu", default=None, metavar="NAME",
                   help=f"device to plan for: {', '.join(DEVICE_NAMES)} (default: this machine's)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per node (default 1)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    p.add_argument("--job", choices=["train", "infer"], default=None,
                   help="what to plan (default: infer for a recipe with an [infer] table and no [train] table, "
                        "else train)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


@command("plan", "predict memory per rank and time of a recipe on a GPU, and what to change when it does not fit",
         _plan_arguments)
def _plan(args: argparse.Namespace) -> int:
    from cosmos_engine.config import load_recipe
    from cosmos_engine.config.load import tomllib
    from cosmos_engine.errors import RecipeError
    from cosmos_engine.plan import check_arguments, local_device_name, make_plan

    gpu = args.gpu or local_device_name()[0]
    try:
        check_arguments(gpu, args.gpus, args.nodes)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    recipe = load_recipe(args.recipe, args.overrides)
    job = args.job
    if job is None:
        with open(args.recipe, "rb") as f:
            tables = tomllib.load(f)
        job = "infer" if "infer" in tables and "train" not in tables else "train"
    plan = make_plan(recipe, job, gpu, args.gpus, args.nodes)
    print(json.dumps(plan.as_dict(), indent=2) if args.json else plan.table())
    return 0


# -------------------------------------------------------------------------------------------- prepare
def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 64x112, got {text!r}") from None
    return height, width


def _prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="?", help="folder of .mp4 clips (captions: --prompt, or <stem>.txt beside each clip)")
    p.add_argument("--out", help="dataset folder to write (videos/, metas/, manifest.json); with --cache alone, "
                                 "the dataset to cache (default: the recipe's data.dataset_dir)")
    p.add_argument("--prompt", help='caption for every video, e.g. "A video of sks teal robot."')
    p.add_argument("--num-frames", type=int, default=None,
                   help="shortest usable video, in frames (default: data.num_frames of the --cache recipe, else 93)")
    p.add_argument("--skip-bad", action="store_true", help="prepare the good videos and list the unusable ones")
    p.add_argument("--copy", action="store_true", help="copy videos even where a hard link is possible")
    g = p.add_argument_group("synthetic clips (no download)")
    g.add_argument("--synthetic", type=int, metavar="N", help="draw N procedural clips instead of reading SRC")
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic clips (default 0)")
    g.add_argument("--frames", type=int, default=33, help="frames per synthetic clip, 1+4k (default 33)")
    g.add_argument("--size", type=_size, default=(64, 112), metavar="HxW", help="synthetic frame size (default 64x112)")
    g.add_argument("--fps", type=float, default=16.0, help="synthetic frame rate (default 16)")
    g = p.add_argument_group("latent cache (what `run` would encode before its first step)")
    g.add_argument("--cache", metavar="RECIPE", help="then encode the dataset's windows and captions as RECIPE trains "
                                                     "on them (its [model] and [data] tables; data.dataset_dir = --out)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override one value of the --cache recipe (repeatable)")


@command("prepare", "turn a folder of clips (or --synthetic N) into a training dataset; --cache encodes it",
         _prepare_arguments)
def _prepare(args: argparse.Namespace) -> int:
    from cosmos_engine.data.prepare import prepare_synthetic, prepare_videos
    from cosmos_engine.data.synthetic import DEFAULT_PROMPT

    if args.src is not None and args.synthetic is not None:
        raise UserError("give either SRC (a folder of videos) or --synthetic N, not both")
    if args.src is None and args.synthetic is None and args.cache is None:
        raise UserError("give SRC (a folder of videos), --synthetic N, or --cache RECIPE to encode an existing dataset")
    if args.synthetic is not None and args.num_frames is not None:
        raise UserError("--num-frames applies to SRC videos; synthetic clips are checked against --frames")
    if args.overrides and args.cache is None:
        raise UserError("--set overrides values of the --cache recipe; give --cache RECIPE")
    if (args.src is not None or args.synthetic is not None) and args.out is None:
        raise UserError("--out DATASET is required to prepare a dataset")
    # The --cache recipe is read and checked before anything is written; its window length is then the
    # shortest usable video.
    recipe = _cache_recipe(args.cache, args.overrides, args.out) if args.cache is not None else None
    num_frames = args.num_frames or (recipe.data.num_frames if recipe else 93)
    if args.synthetic is not None:
        if recipe and args.frames < recipe.data.num_frames:
            raise UserError(f"--frames {args.frames}: the --cache recipe trains on windows of data.num_frames = "
                            f"{recipe.data.num_frames} frames; draw clips at least that long")
        height, width = args.size
        result = prepare_synthetic(args.out, count=args.synthetic, seed=args.seed, frames=args.frames, height=height,
                                   width=width, fps=args.fps, prompt=args.prompt or DEFAULT_PROMPT)
    elif args.src is not None:
        result = prepare_videos(args.src, args.out, prompt=args.prompt, num_frames=num_frames,
                                skip_bad=args.skip_bad, copy=args.copy)
    else:
        result = None
    if result is not None:
        print(f"{result.out}: {len(result.videos)} videos ready ({result.written} files written, {result.removed} removed)")
        if result.bad:
            print(f"skipped {len(result.bad)} unusable files:")
            for bad in result.bad:
                print(f"  {bad.reason}")
    if recipe is not None:
        _fill_cache(recipe)
    return 0


def _cache_recipe(recipe_path: str, overrides: list[str], dataset_dir: str | None):
    from cosmos_engine.config import load_recipe

    if dataset_dir is not None:
        overrides = [*overrides, f"data.dataset_dir={json.dumps(str(dataset_dir))}"]
    return load_recipe(recipe_path, overrides)


def _fill_cache(recipe) -> None:
    import torch

    from cosmos_engine.train.data import fill_cache

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    from cosmos_engine.data.cache import human_bytes

    _, _, _, stats, text = fill_cache(recipe.model, recipe.data, device)
    if recipe.data.cache == "windows":
        what = (f"{stats.windows} windows ({human_bytes(stats.window_bytes)} on disk, window_stride "
                f"{recipe.data.window_stride}, at most {recipe.data.max_cached_windows} per video) and captions")
    else:
        what = 'captions only (the recipe has cache = "off")'
    print(f"{recipe.data.dataset_dir}/cache: {what}: {stats.latents_encoded} latents and {text.encoded} "
          f"captions encoded, {stats.hits + text.hits} already cached, {stats.corrupt + text.corrupt} recomputed "
          "(unreadable or written for another key)")


# -------------------------------------------------------------------------------------------- convert
def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR|RECIPE.toml",
                   help="a DCP checkpoint: RUN/checkpoints/iter_XXXXXXXXX, its model/ folder, or a run or checkpoints "
                        "folder (its latest_checkpoint.txt picks the latest); or a recipe: the newest complete "
                        "checkpoint of the run it trains, under the active output root; with --to diffusers also an "
                        "official .pt file")
    p.add_argument("out_dir", nargs="?", metavar="OUT_DIR",
                   help="where model.pt, model_ema_fp32.pt and model_ema_bf16.pt go (default: the iter_XXXXXXXXX "
                        "folder); with --to diffusers the transformer folder (default: iter_XXXXXXXXX/transformer)")
    p.add_argument("--to", choices=["official", "diffusers"], default="official",
                   help="official: the three .pt files; diffusers: a CosmosTransformer3DModel folder (config.json + "
                        "diffusion_pytorch_model*.safetensors) of the EMA weights")
    p.add_argument("--no-ema", dest="ema", action="store_false",
                   help="write model.pt only (a run trained without EMA); with --to diffusers: export the training "
                        "weights")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="with --to diffusers: cast the weights to this dtype (default: as stored)")
    p.add_argument("--merge-lora", action="store_true",
                   help="a LoRA run: write the three files with the adapters merged (plain official keys) instead of "
                        "the PEFT-injected keys; lora_adapter/ is written either way")
    _add_trust_argument(p)


@command("convert", "turn a training checkpoint into the official inference files (and a LoRA run's adapter)",
         _convert_arguments)
def _convert(args: argparse.Namespace) -> int:
    from cosmos_engine.convert import convert_checkpoint, convert_to_diffusers
    from cosmos_engine.models.flavors import parameter_dtype

    if args.to == "diffusers" and args.merge_lora:
        raise UserError("--merge-lora applies to the official conversion: convert a LoRA run with --merge-lora "
                        "first, then export its merged model_ema_fp32.pt with --to diffusers")
    if args.to == "diffusers":
        dtype = parameter_dtype(args.dtype) if args.dtype else None
        paths = convert_to_diffusers(args.checkpoint, args.out_dir, ema=args.ema, dtype=dtype,
                                     trust_checkpoint=args.trust_checkpoint)
    elif args.dtype:
        raise UserError("--dtype applies to --to diffusers only; the official conversion writes both fp32 and bf16")
    else:
        paths = convert_checkpoint(args.checkpoint, args.out_dir, ema=args.ema, merge_lora=args.merge_lora,
                                   trust_checkpoint=args.trust_checkpoint)
    for path in paths:
        print(path)
    return 0


# ------------------------------------------------------------------------------------------------ run
def _run_arguments(p: argparse.ArgumentParser) -> None:
    _add_recipe_arguments(p)
    _add_trust_argument(p)
    p.add_argument("--allow-recipe-change", action="store_true",
                   help="resume although recipe values that change the training result differ from those the "
                        "checkpoints were trained with; the new values apply from the next step")
    p.add_argument("--overwrite", action="store_true",
                   help="with checkpoint.resume = false: move the run folder's earlier checkpoints aside to "
                        "RUN/replaced/ and start again")


@command("run", "post-train the Video2World DiT as a recipe says (under torchrun for several GPUs)", _run_arguments)
def _run(args: argparse.Namespace) -> int:
    import os

    from cosmos_engine.config import load_recipe
    from cosmos_engine.config.paths import run_dir_for
    from cosmos_engine.train.run_folder import RunFolderOptions
    from cosmos_engine.train.stop_signals import RunStopped
    from cosmos_engine.train.trainer import post_train

    from cosmos_engine.plan import announce

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = run_dir_for(recipe.job)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        log.info("run folder %s", run_dir)
        announce(recipe, "train")
    options = RunFolderOptions(allow_recipe_change=args.allow_recipe_change, overwrite=args.overwrite)
    try:
        last = post_train(recipe, run_dir, trust_checkpoint=args.trust_checkpoint, folder_options=options)
    except RunStopped as stopped:
        if is_main:
            print(f"cosmos-engine run: {stopped}", file=sys.stderr)
        return stopped.exit_code
    if last and is_main:
        print(f"step {last['step']}: loss {last['loss']:.5f}; checkpoints in {run_dir / 'checkpoints'}")
    return 0


# ---------------------------------------------------------------------------------------------- infer
def _infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RECIPE_OR_SAMPLES",
                   help="a TOML recipe (its [infer] table is the sample) or an official JSON sample file")
    p.add_argument("--recipe", help="with a JSON sample file: the TOML recipe giving [model] and the [infer] "
                                    "defaults (frames, fps, sampler, ...); default: the built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override one recipe value (repeatable), e.g. --set infer.seed=3")
    p.add_argument("--checkpoint-path", help="DiT weights (model_ema_bf16.pt, ..., a diffusers transformer folder, or "
                                             "run:RECIPE.toml: that run's latest converted EMA file); overrides "
                                             "infer.checkpoint_path")
    p.add_argument("--lora", action="append", default=None, metavar="PATH[:SCALE]",
                   help="apply a LoRA adapter (a PEFT folder, e.g. a converted run's lora_adapter/) at SCALE (default "
                        "1), unmerged; repeat to combine several; replaces infer.lora")
    p.add_argument("--output-dir", help="where <name>.mp4 and <name>.png go; overrides infer.output_dir")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_trust_argument(p)
    p.add_argument("--context-parallel", action="store_true",
                   help="under torchrun: split each sample's latent frames over all ranks (the default does this "
                        "with more than 2 ranks and fewer samples than ranks)")


@command("infer", "generate videos with a (post-trained) Video2World checkpoint: text2world, image2world, video2world",
         _infer_arguments)
def _infer(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    from pathlib import Path

    from cosmos_engine.config import load_recipe
    from cosmos_engine.convert import RUN_PREFIX
    from cosmos_engine.errors import RecipeError
    from cosmos_engine.infer.pipeline import run_infer
    from cosmos_engine.infer.sample_files import load_sample_file

    if args.source.lower().endswith(".json"):
        recipe = load_recipe(args.recipe, args.overrides)
        samples = load_sample_file(args.source, recipe.infer)
    else:
        if args.recipe:
            raise RecipeError(f"--recipe {args.recipe}: only used with a JSON sample file; {args.source} is the recipe")
        recipe = load_recipe(args.source, args.overrides)
        samples = {recipe.infer.name: recipe.infer}
    changes = {}
    if args.checkpoint_path is not None and args.checkpoint_path.startswith(RUN_PREFIX):
        changes["checkpoint_path"] = args.checkpoint_path  # the pipeline resolves it, as in a recipe
    elif args.checkpoint_path is not None:
        checkpoint = Path(args.checkpoint_path).expanduser().absolute()
        if not checkpoint.exists():
            raise RecipeError(f"--checkpoint-path {args.checkpoint_path}: no such file or folder ({checkpoint})")
        changes["checkpoint_path"] = str(checkpoint.resolve())
    if args.output_dir is not None:
        changes["output_dir"] = os.path.expanduser(args.output_dir)
    if args.lora is not None:
        from cosmos_engine.config.load import split_lora_spec

        for spec in args.lora:
            split_lora_spec(spec, f"--lora {spec}")
        changes["lora"] = tuple(os.path.expanduser(spec) for spec in args.lora)
    samples = {name: dataclasses.replace(cfg, **changes) for name, cfg in samples.items()}
    if int(os.environ.get("RANK", "0")) == 0:
        from cosmos_engine.plan import announce

        announce(dataclasses.replace(recipe, infer=next(iter(samples.values()))), "infer")
    for result in run_infer(recipe.model, samples, progress=args.progress, trust_checkpoint=args.trust_checkpoint,
                            context_parallel=args.context_parallel, lora_cfg=recipe.lora):
        print(result.video_path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cosmos-engine", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except UserError as exc:
        print(f"cosmos-engine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"cosmos-engine {args.command}: error: no space left on device while writing {exc.filename or 'a file'}",
              file=sys.stderr)
        return 2
    finally:
        if "torch.distributed" in sys.modules:  # only a command that imported torch can have a process group
            from cosmos_engine.parallel.distributed import shutdown_distributed

            shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
