"""The one-line errors of config validation and the small checks that raise them."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union


class ConfigError(ValueError):
    """A bad config value, said in one line: key, value, what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        said = f"{key}: {allowed}" if value is NO_VALUE else f"{key}={shown(value)}: {allowed}"
        super().__init__(said)
        self.key, self.value, self.allowed = key, value, allowed


NO_VALUE = object()  # for keys that are wrong whatever their value (unknown, missing)


def shown(value: Any) -> str:
    """As it would be typed on the command line: nf5, 0, [q_proj,foo], null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(shown(v) for v in value) + "]"
    return str(value)


def choice(key: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"expected one of {', '.join(map(str, allowed))}")


def positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(key, value, "expected an integer > 0")


def at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(key, value, f"expected an integer >= {low}")


def positive_float(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, value, "expected a number > 0")


def build_dataclass(cls: type, node: Any, key: str) -> Any:
    """A config node (a plain dict) -> the dataclass, each field coerced to its type; unknown keys refused."""
    if not isinstance(node, dict):
        raise ConfigError(key, node, f"expected a {cls.__name__} mapping")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(node) - set(hints))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", NO_VALUE, f"unknown key; expected one of {', '.join(hints)}")
    return cls(**{name: _coerce(node[name], hints[name], f"{key}.{name}") for name in node})


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(err.allowed)
        raise ConfigError(key, value, " or ".join(errors))
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "expected a string")
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "expected a mapping")
        return dict(value)
    if origin is list and args == (int,):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(key, value, "expected a list of integers")
        return list(value)
    if hint is list or origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, value, "expected a list of names")
        return list(value)
    raise TypeError(f"config field {key} has an unsupported type {hint!r}")
