"""Build frozen option dataclasses from YAML mappings, naming the offending key on any mistake.

Used for ``config.yaml`` sections and for every stage's and engine's options, so all of them get
the same checks: unknown keys, wrong types, and out-of-range values all raise ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args, get_origin

from vocab.errors import ConfigError


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: expected {hint}, got {value!r}")
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(a) for a in get_args(hint))
            raise ConfigError(f"{path}: {value!r} is not one of {choices}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item_hint = get_args(hint)[0] if get_args(hint) else Any
        items = [_convert(item_hint, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        val_hint = get_args(hint)[1] if get_args(hint) else Any
        return {str(k): _convert(val_hint, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    raise ConfigError(f"{path}: unsupported option type {hint!r}")


def field_names(cls: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build(cls: type[Any], data: Any, path: str, *, ignore: Iterable[str] = ()) -> Any:
    """Instantiate dataclass ``cls`` from ``data``; ``ignore`` lists keys checked elsewhere."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = set(field_names(cls))
    for key in data:
        if key not in names and key not in ignore:
            known = ", ".join(sorted(names)) or "(none)"
            raise ConfigError(f"{path}.{key}: unknown key (known keys: {known})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{path}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}.{f.name}: required key is missing")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{path}.{exc}") from None
    return obj


def require(condition: bool, key: str, message: str) -> None:
    """For ``validate()`` methods: raise ``ValueError('key: message')`` when ``condition`` fails."""
    if not condition:
        raise ValueError(f"{key}: {message}")
