"""Imports run down only (DESIGN.md §2): cli -> jobs (train/, infer/, convert.py) -> data/ -> models/ ->
parallel/ -> ops/, with config/ a leaf that imports none of them. Checked on the source (function-level
imports included), plus two consequences: `cosmos-engine check` works without torch, and importing the
recipe schema imports no model code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "cosmos_engine"
RECIPE = PACKAGE.parents[1] / "recipes" / "tiny_posttrain.toml"

# Part of the package -> the parts it must never import.
JOBS = {"train", "infer", "convert", "cli"}
FORBIDDEN = {
    "config": JOBS | {"data", "models", "parallel", "ops"},
    "ops": JOBS | {"data", "models", "parallel"},
    "parallel": JOBS | {"data", "models"},
    "models": JOBS | {"data"},
    "data": JOBS,
    "infer": {"train", "cli"},
    "convert": {"train", "infer", "cli"},
    "train": {"infer", "cli"},
}


def _part(module: str) -> str | None:
    names = module.split(".")
    return names[1] if names[0] == "cosmos_engine" and len(names) > 1 else None


def _imports(path: Path) -> set[str]:
    """Every cosmos_engine module that `path` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name.startswith("cosmos_engine.")}


def test_imports_run_down_only():
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        part = relative.parts[0].removesuffix(".py")
        for module in sorted(_imports(path)):
            if _part(module) in FORBIDDEN.get(part, set()):
                broken.append(f"{relative} imports {module}")
    assert not broken, "\n".join(broken)


def test_the_layer_rules_see_function_level_imports(tmp_path):
    """The check above must not pass by missing imports inside functions (as infer/ had of train/)."""
    source = tmp_path / "probe.py"
    source.write_text("def run():\n    from cosmos_engine.train.data import fill_cache\n")
    assert "cosmos_engine.train.data" in _imports(source)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_check_runs_with_torch_unimportable():
    # A None entry in sys.modules makes `import torch` raise ImportError, as if torch were not installed.
    result = _python("import sys\nsys.modules['torch'] = None\nfrom cosmos_engine.cli import main\n"
                     f"code = main(['check', {str(RECIPE)!r}])\n"
                     "assert not [m for m in sys.modules if m.startswith('torch') and sys.modules[m] is not None]\n"
                     "sys.exit(code)")
    assert result.returncode == 0, result.stderr[-3000:]
    assert '[model]\nflavor = "tiny"' in result.stdout and "negative_prompt = " in result.stdout


@pytest.mark.parametrize("module", ["cosmos_engine.config.schema", "cosmos_engine.config", "cosmos_engine"])
def test_importing_the_recipe_code_imports_no_model_code_and_no_torch(module):
    result = _python(f"import sys, {module}\n"
                     "print(sorted(m for m in sys.modules if m.startswith(('cosmos_engine.models', 'torch'))))")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
