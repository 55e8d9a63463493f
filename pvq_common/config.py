"""One strict loader for the project's config trees (the model's ``PVQConfig``, the shard job's
``ShardConfig``): YAML files with an optional ``base:``, ``key.path=value`` overrides with YAML
values, and validation of a tree of stdlib dataclasses by pydantic v2.

The dataclasses stay plain (``cfg.train.steps``); validation runs on a pydantic model mirrored from
each dataclass once (``extra="forbid"``, strict types), and the validated values are handed to the
dataclass constructor, so unset keys keep the dataclass defaults. Types are strict, as a config
should be: an integer is not a bool, ``"3"`` is not an integer, ``1`` is not ``true``. Two
conveniences: a float accepts an integer and a numeric string (YAML 1.1 reads ``1e-5`` as a
string), and a list accepts a tuple. Every error names the key path::

    train.stepz: unknown key; known keys here: seed, steps, ...
    train.steps: expected an integer, got 'abc'
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError, create_model

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key path and the fix."""


# --------------------------------------------------------------------------------------------
# YAML files and overrides


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config YAML, following an optional top-level ``base: other.yaml`` (relative path)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is not None:
        data = _deep_merge(read_yaml(path.parent / base), data)
    return data


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``tree[a][b][c] = value`` for ``dotted = "a.b.c"``, creating missing sections."""
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (values parsed as YAML) to ``data`` in place; returns it."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        set_dotted(data, key.strip(), yaml.safe_load(raw))
    return data


# --------------------------------------------------------------------------------------------
# Validation: a strict pydantic model mirrored from each dataclass


def _numeric_string(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _mirror_type(tp: Any) -> Any:
    """The pydantic annotation that validates a value for the dataclass annotation ``tp``."""
    if dataclasses.is_dataclass(tp):
        return _model_of(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_mirror_type(a) for a in typing.get_args(tp))]
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return Annotated[list[_mirror_type(item)], Strict(False)]  # a tuple is a list; items stay strict
    if tp is float:
        return Annotated[float, BeforeValidator(_numeric_string)]
    return tp


@functools.cache
def _model_of(cls: type) -> type[BaseModel]:
    """The strict pydantic model that validates the dict form of dataclass ``cls`` (cached)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: (_mirror_type(hints[f.name]), None) for f in dataclasses.fields(cls)}
    strict = ConfigDict(extra="forbid", strict=True, protected_namespaces=())
    model = create_model(f"{cls.__name__}Schema", __config__=strict, **fields)
    model.__dataclass__ = cls
    return model


def _build(model: BaseModel) -> Any:
    """The dataclass instance of a validated model; keys that were not given keep their defaults."""
    def value(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return _build(v)
        return [value(x) for x in v] if isinstance(v, list) else v

    return type(model).__dataclass__(**{k: value(getattr(model, k)) for k in model.model_fields_set})


_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "bool_type": "true/false",
             "bool_parsing": "true/false", "float_type": "a number", "float_parsing": "a number",
             "string_type": "a string", "list_type": "a list"}


def _section(cls: type, loc: tuple) -> type | None:
    """The dataclass at key path ``loc`` below ``cls`` (None when ``loc`` leads elsewhere)."""
    for part in loc:
        tp = typing.get_type_hints(cls).get(part) if isinstance(part, str) else None
        cls = next((a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)), None)
        if cls is None:
            return None
    return cls


def _message(cls: type, err: dict, prefix: str) -> str:
    """``key.path: what is wrong`` for one pydantic error of the model of ``cls``."""
    path = prefix
    for part in err["loc"]:
        path = f"{path}[{part}]" if isinstance(part, int) else (f"{path}.{part}" if path else str(part))
    got = err.get("input")
    if err["type"] == "extra_forbidden":
        section = _section(cls, err["loc"][:-1])
        known = f"; known keys here: {', '.join(f.name for f in dataclasses.fields(section))}" if section else ""
        return f"{path}: unknown key{known}"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"{path or cls.__name__}: expected a mapping, got {type(got).__name__} {got!r}"
    if err["type"] in _EXPECTED:
        return f"{path}: expected {_EXPECTED[err['type']]}, got {got!r}"
    return f"{path}: {err['msg'][:1].lower()}{err['msg'][1:]}, got {got!r}"


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`
    naming each key path (``path`` is prefixed to them)."""
    try:
        model = _model_of(cls).model_validate(data)
    except ValidationError as e:
        raise ConfigError("; ".join(_message(cls, err, path) for err in e.errors())) from None
    return _build(model)


def load_tree(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
              validate: Callable[[T], None] | None = None) -> T:
    """Load dataclass tree ``cls`` from YAML ``path`` (defaults when None) plus ``key.path=value``
    overrides, then run the tree's cross-field ``validate``; errors name the file."""
    data = apply_overrides(read_yaml(path) if path is not None else {}, overrides)
    try:
        cfg = from_dict(cls, data)
        if validate is not None:
            validate(cfg)
    except ConfigError as e:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"{e}{where}") from None
    return cfg
