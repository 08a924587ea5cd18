"""Recipes: one frozen dataclass per TOML table (schema.py) and the strict loader (load.py)."""

from cosmos_engine.config.load import load_recipe, parse_override, write_resolved
from cosmos_engine.config.schema import Recipe

__all__ = ["Recipe", "load_recipe", "parse_override", "write_resolved"]
