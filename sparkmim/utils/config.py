"""Configuration = defaults, then a recipe file (YAML), then command-line overrides.

The resolved configuration is written to the run folder so that every run can be repeated."""
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import yaml

from sparkmim.utils.errors import UserError


class ConfigError(UserError, ValueError):
    """A recipe or override names an unknown key or has the wrong type."""


def load_recipe(path: Optional[str]) -> Dict[str, Any]:
    if not path:
        return {}
    recipe_path = Path(path)
    if not recipe_path.is_file():
        raise ConfigError(f"recipe file not found: {recipe_path}")
    data = yaml.safe_load(recipe_path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {recipe_path} must be a YAML mapping of option: value")
    return data


def merge(defaults: Mapping[str, Any], *layers: Mapping[str, Any]) -> Dict[str, Any]:
    """Later layers win; a key unknown to ``defaults`` is an error (typos must not pass silently);
    ``None`` in a layer means 'not given'."""
    resolved = dict(defaults)
    for layer in layers:
        for key, value in layer.items():
            if key not in resolved:
                raise ConfigError(f"unknown option '{key}'; known options: {', '.join(sorted(resolved))}")
            if value is not None:
                resolved[key] = value
    return resolved


def save_config(config: Mapping[str, Any], path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(dict(config), sort_keys=True))
