"""Build frozen, typed dataclasses from plain dicts, rejecting unknown keys and wrong types.

Pure code (no Spark). Every error names the dotted key, what was received, and what fits.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type, or out of range."""


def build(cls: type[T], data: Any, key: str = "") -> T:
    """Construct dataclass ``cls`` from ``data`` (a mapping), recursively and strictly.

    Parameters
    ----------
    cls
        A dataclass type whose fields carry type annotations.
    data
        Mapping of field name to value, as loaded from YAML.
    key
        Dotted path of ``data`` in the whole config, used in error messages.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{key or '<root>'}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(_unknown_key_message(key, unknown[0], list(fields)))
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = coerce(hints[name], value, _join(key, name))
    missing = [n for n, f in fields.items() if n not in kwargs and _has_no_default(f)]
    if missing:
        raise ConfigError(f"{_join(key, missing[0])}: required key is missing; set it in the YAML or with --set")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(_qualify(str(exc), key)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key or '<root>'}: {exc}") from exc


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert YAML lists to tuples and ints to floats."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(tp, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{key}: got {value!r}; choose one of {choices}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, {} if value is None else value, key)  # type: ignore[arg-type]
    if origin is tuple:
        return _coerce_tuple(tp, value, key)
    if origin is dict:
        return _coerce_dict(tp, value, key)
    return _coerce_scalar(tp, value, key)


def _coerce_union(tp: Any, value: Any, key: str) -> Any:
    args = get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{key}: a value is required, got null")
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(arg, value, key)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")


def _coerce_tuple(tp: Any, value: Any, key: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    args = get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{key}: expected a list of {len(args)} values, got {len(value)}: {value!r}")
    return tuple(coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _coerce_dict(tp: Any, value: Any, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    key_tp, value_tp = get_args(tp)
    return {coerce(key_tp, k, f"{key}.{k}"): coerce(value_tp, v, f"{key}.{k}") for k, v in value.items()}


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # YAML reads `driver_memory: 4` as an int; a string was meant.
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got boolean {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _has_no_default(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _qualify(message: str, key: str) -> str:
    """Give a nested section's own check its full key: ``split: ...`` -> ``ingest_text.split: ...``."""
    head = key.rpartition(".")[2]
    if "." in key and message.startswith((head + ":", head + ".")):
        return key + message[len(head):]
    return message


def _unknown_key_message(prefix: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{_join(prefix, name)}: unknown key; {hint}known keys here: {', '.join(sorted(known))}"


def to_dict(obj: Any) -> Any:
    """Turn a built config back into plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


__all__ = ["ConfigError", "build", "coerce", "to_dict"]
