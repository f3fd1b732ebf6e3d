"""Frozen, keyword-only config dataclasses with strict JSON round trips and named presets.

Every component config subclasses :class:`Config` and is declared with
``@dataclass(frozen=True, kw_only=True)``. ``from_dict`` rejects unknown keys (naming them),
checks types (including ``Literal`` choices, tuples and nested configs) and runs the class's
``validate`` hook, so a config that exists is a config that is valid.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from tessera.errors import ConfigError

C = TypeVar("C", bound="Config")

_PRESETS: dict[str, dict[str, Callable[[], Config]]] = {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base of all tessera configs. Subclasses set ``kind`` (used by presets and checkpoints)."""

    kind: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            hint = _hints(type(self))[f.name]
            coerced = _coerce(hint, value, f"{type(self).__name__}.{f.name}")
            if coerced is not value:
                object.__setattr__(self, f.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values out of range. Override in subclasses."""

    # -- dict / JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out[f.name] = _to_jsonable(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key {unknown[0]!r}"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                + f"; valid keys: {', '.join(sorted(names))}"
            )
        try:
            return cls(**dict(data))
        except TypeError as e:  # a missing required field
            raise ConfigError(f"{cls.__name__}: {e}") from None

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps({"kind": self.kind, **self.to_dict()}, indent=2, sort_keys=True) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> Self:
        """Load from a JSON file path or a JSON string. A ``kind`` key, if present, must match."""
        text = _read_json_text(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{cls.__name__}: invalid JSON ({e.msg} at line {e.lineno})"
            ) from None
        if isinstance(data, dict) and "kind" in data:
            data = dict(data)
            kind = data.pop("kind")
            if kind != cls.kind:
                raise ConfigError(
                    f"{cls.__name__}: config is of kind {kind!r}, expected {cls.kind!r}"
                )
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated like a new config)."""
        return self.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, overrides: list[str]) -> Self:
        """Apply ``key=value`` strings (values parsed as JSON, else kept as strings).

        Dotted keys reach into nested configs: ``filters.min_caption_chars=3``.
        """
        data = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key, raw = item.split("=", 1)
            try:
                value: Any = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            node = data
            parts = key.strip().split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"{type(self).__name__}: unknown key {key!r}")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"{type(self).__name__}: unknown key {key!r}")
            node[parts[-1]] = value
        return self.from_dict(data)


def _read_json_text(source: str | Path) -> str:
    if isinstance(source, Path) or not str(source).lstrip().startswith("{"):
        path = Path(source)
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
    return str(source)


_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS_CACHE:
        _HINTS_CACHE[cls] = typing.get_type_hints(cls)
    return _HINTS_CACHE[cls]


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    return value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against a type hint; convert JSON forms (lists, dicts) to the hinted type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, tuple | list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            items = tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        else:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = tuple(
                _coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))
            )
        return (
            value
            if isinstance(value, tuple) and all(a is b for a, b in zip(items, value))
            else items
        )
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return hint.from_dict(value)
        raise ConfigError(f"{where}: expected an object for {hint.__name__}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value) if isinstance(value, int) else value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


# -- presets ---------------------------------------------------------------------------------
def register_preset(kind: str, name: str) -> Callable[[Callable[[], C]], Callable[[], C]]:
    """Decorator: register a zero-argument factory as preset ``name`` of config ``kind``."""

    def deco(fn: Callable[[], C]) -> Callable[[], C]:
        _PRESETS.setdefault(kind, {})[name] = fn
        return fn

    return deco
