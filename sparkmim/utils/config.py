"""Configuration = defaults, then a recipe file (YAML), then command-line overrides, checked once
into a frozen, typed dataclass (:class:`TypedConfig`).

The resolved configuration is written to the run folder so that every run can be repeated."""
import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

from sparkmim.utils.errors import UserError
from sparkmim.utils.disk import writing


class ConfigError(UserError, ValueError):
    """A recipe or override names an unknown key or has the wrong type."""


def load_recipe(path: Optional[str]) -> Dict[str, Any]:
    if not path:
        return {}
    recipe_path = Path(path)
    if not recipe_path.is_file():
        raise ConfigError(f"recipe file not found: {recipe_path}")
    try:
        data = yaml.safe_load(recipe_path.read_text()) or {}
    except yaml.YAMLError as error:  # the parser's own position: "line 3, column 1"
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"recipe {recipe_path} is not valid YAML{where}: {problem}") from None
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
    with writing(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(dict(config), sort_keys=True))


def as_flag(key: str, value: Any) -> str:
    """Option ``key`` with ``value`` as the command line gives it: ``--in-chans 1``, ``--linear-probe``,
    ``no --model-kwargs`` (unset, false or empty), ``--model-kwargs '{"stem_width": 8}'``."""
    flag = "--" + key.replace("_", "-")
    if value is None or value is False or (isinstance(value, (dict, list, tuple)) and not value):
        return f"no {flag}"
    if value is True:
        return flag
    if isinstance(value, dict):
        return f"{flag} '{json.dumps(value, sort_keys=True)}'"
    if isinstance(value, (list, tuple)):
        return f"{flag} {' '.join(map(str, value))}"
    return f"{flag} {value}"


def check_number_ranges(config: Mapping[str, Any], positive: Sequence[str] = (),
                        non_negative: Sequence[str] = (), probability: Sequence[str] = ()) -> None:
    """Numeric options in range and finite, each error naming the option as the command line gives it
    (``--base-lr``); an unset (None) option passes. The libraries take a negative decay or clip, or a
    probability of 2, without a word, or refuse a negative lr with a traceback."""
    for keys, fits, wanted in ((positive, lambda v: v > 0, "a positive number"),
                               (non_negative, lambda v: v >= 0, "0 or more"),
                               (probability, lambda v: 0 <= v <= 1, "within [0, 1]")):
        for key in keys:
            value = config[key]
            if value is not None and not (math.isfinite(value) and fits(value)):
                raise ConfigError(f"--{key.replace('_', '-')} must be {wanted}, got {value}")


def option_difference(saved: Mapping[str, Any], current: Mapping[str, Any],
                      keys: Sequence[str]) -> Optional[Tuple[str, str]]:
    """The ``keys`` whose values differ between a saved run's options and this run's, as the two command
    lines give them (``("--in-chans 3", "--in-chans 1")``), or None when they agree. A key absent from
    ``saved`` is no difference: the option did not exist when that run was saved."""
    changed = [key for key in keys if key in saved and saved[key] != current.get(key)]
    if not changed:
        return None
    return (", ".join(as_flag(key, saved[key]) for key in changed),
            ", ".join(as_flag(key, current.get(key)) for key in changed))


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, List):
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        return f"a list of {plural.get(args[0], 'values')}" if args else "a list"
    if origin in (dict, Dict):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(annotation, str(annotation))


def _coerce(value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` (int -> float, '1e-3' -> float: YAML reads exponents without a dot as
    text), or raise TypeError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option)
            except TypeError:
                continue
        raise TypeError
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [_coerce(item, args[0]) if args else item for item in value]
    if origin in (dict, Dict):
        if not isinstance(value, Mapping):
            raise TypeError
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise TypeError from None
        raise TypeError
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    raise TypeError


T = TypeVar("T", bound="TypedConfig")


class TypedConfig:
    """Base of the frozen dataclass each pipeline's options form (``PretrainConfig``, ``FinetuneConfig``).

    Built once from the merged layers (defaults <- recipe <- command line) by :meth:`from_mapping`, which
    checks every value against its field's type, so a wrong type is one line naming the option rather than
    an error deep inside a run. It reads as attributes (``config.batch_size``) and as a read-only mapping
    (``config["batch_size"]``, ``dict(config)``), the form saved to ``config.yaml`` and into checkpoints."""

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """Every option with its default value (``None``: not given, filled in or required later)."""
        values = {}
        for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
            has_factory = spec.default_factory is not dataclasses.MISSING  # type: ignore[misc]
            values[spec.name] = spec.default_factory() if has_factory else spec.default  # type: ignore[misc]
        return values

    @classmethod
    def from_mapping(cls: Type[T], values: Mapping[str, Any]) -> T:
        hints = typing.get_type_hints(cls)
        known = set(hints)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown option '{unknown[0]}'; known options: {', '.join(sorted(known))}")
        checked = {}
        for name, value in values.items():
            try:
                checked[name] = _coerce(value, hints[name])
            except TypeError:
                raise ConfigError(f"option '{name}' must be {_type_name(hints[name])}, got {value!r}") from None
        return cls(**checked)  # type: ignore[call-arg]

    def as_dict(self) -> Dict[str, Any]:
        return {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self)}  # type: ignore[arg-type]

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes``, type-checked like the original."""
        return type(self).from_mapping({**self.as_dict(), **changes})

    def keys(self) -> List[str]:
        return [spec.name for spec in dataclasses.fields(self)]  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default
