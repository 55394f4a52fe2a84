"""Load config: ``base.yaml`` < ``pipelines/<name>.yaml`` < ``profiles/<profile>.yaml`` < ``--conf`` files < ``--set``.

Pure code. The result is a frozen, validated :class:`AppConfig`; nothing downstream reads YAML.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from dlspark.config.schema import AppConfig
from dlspark.config.typed import ConfigError, build, to_dict

DEFAULT_CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
PROFILES = ("local", "standalone", "yarn", "k8s", "connect")
PASSTHROUGH_MAPS = ("spark.conf",)  # mappings keyed by dotted Spark property names


def load_config(
    *,
    profile: str = "local",
    pipeline: str | Sequence[str] | None = None,
    conf_dir: str | os.PathLike | None = None,
    extra_files: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> AppConfig:
    """Merge the YAML layers and ``key.path=value`` overrides, then validate into :class:`AppConfig`.

    ``pipeline`` names one or more ``conf/pipelines/<name>.yaml`` layers, applied in order.

    Raises
    ------
    ConfigError
        On a missing file, unknown key, wrong type or out-of-range value, naming the dotted key.
    """
    root = Path(conf_dir or os.environ.get("DLSPARK_CONF_DIR") or DEFAULT_CONF_DIR)
    layers = [root / "base.yaml"]
    for name in [pipeline] if isinstance(pipeline, str) else (pipeline or ()):
        layers.append(_existing(root / "pipelines" / f"{name}.yaml", f"pipeline {name!r}", root / "pipelines"))
    layers.append(_existing(root / "profiles" / f"{profile}.yaml", f"profile {profile!r}", root / "profiles"))
    layers.extend(_existing(Path(p), "--conf file") for p in extra_files)
    merged: dict[str, Any] = {}
    for path in layers:
        merged = deep_merge(merged, read_yaml(path))
    for item in overrides:
        merged = apply_override(merged, item)
    return build(AppConfig, merged)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; an empty file is an empty mapping."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``top``; nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(data: dict[str, Any], item: str) -> dict[str, Any]:
    """Apply one ``--set a.b.c=value`` override; the value is parsed as YAML (``3``, ``[28, 28]``, ``null``).

    Under ``spark.conf`` the rest of the key is one Spark property and the value stays a string:
    ``--set spark.conf.spark.sql.ansi.enabled=true``.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set ingest_images.size=[28,28]")
    parts, passthrough = _key_parts(key.strip())
    try:
        value = raw if passthrough else yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
    out = copy.deepcopy(data)
    node = out
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value
    return out


def config_hash(cfg: AppConfig) -> str:
    """Short, stable hash of the resolved config, for run summaries and lineage."""
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _key_parts(key: str) -> tuple[list[str], bool]:
    for prefix in PASSTHROUGH_MAPS:
        if key.startswith(prefix + "."):
            return [*prefix.split("."), key[len(prefix) + 1:]], True
    return key.split("."), False


def _existing(path: Path, what: str, folder: Path | None = None) -> Path:
    if path.is_file():
        return path
    choices = _yaml_names(folder.glob("*.yaml")) if folder and folder.is_dir() else []
    hint = f"; available: {', '.join(choices)}" if choices else ""
    raise ConfigError(f"{what}: no such file {path}{hint}")


def _yaml_names(paths: Iterable[Path]) -> list[str]:
    return sorted(p.stem for p in paths)
