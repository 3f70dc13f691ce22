"""The one-line errors of config validation and the small checks that raise them."""

from __future__ import annotations

from typing import Any


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
