"""Model registry: register a run's model, alias it ``candidate``, promote it to ``champion`` only when it
beats the current champion's metric, and roll ``champion`` back.

Bookkeeping lives in the registry itself so any client sees it: each version carries its metric as the
version tags ``dlspark.metric_name`` / ``dlspark.metric_value``, and the registered model carries the
tag ``dlspark.champion_history``, a JSON list of the versions that were champion, oldest first.
Higher metric values are better (``mlflow.promote_metric`` is e.g. ``val_accuracy``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from dlspark.tracking.target import TrackingError, TrackingTarget

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
WEIGHTS_TAG = "dlspark.weights_sha256"      # TrainResult.weights_digest: the same weights register once
METRIC_NAME_TAG, METRIC_VALUE_TAG = "dlspark.metric_name", "dlspark.metric_value"
HISTORY_TAG = "dlspark.champion_history"
HISTORY_KEEP = 200  # the tag value has a size limit; older entries are dropped


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register_and_promote`."""

    version: str
    promoted: bool
    previous_champion: str | None
    reason: str


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as ``jobs/models.py list`` shows it."""

    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    metric_name: str | None
    metric_value: float | None
    created_ms: int
    tags: dict[str, str] = field(default_factory=dict)


def register_and_promote(
    target: TrackingTarget, name: str, run_id: str, artifact_path: str, metric_name: str, metric_value: float,
    tags: Mapping[str, str] | None = None,
) -> RegistrationResult:
    """Register the model ``artifact_path`` of run ``run_id`` as a new version of ``name``.

    The new version gets alias ``candidate``, its metric and ``tags`` as tags. Alias ``champion`` moves to it when
    there is no champion yet, or when ``metric_value`` is strictly greater than the champion's value of
    the same metric; otherwise the champion stays and the reason says why.

    Raises
    ------
    TrackingError
        When the run does not exist or holds no model named ``artifact_path``.
    """
    client = target.client()
    source, model_id = _model_source(client, run_id, artifact_path)
    _ensure_registered_model(client, name)
    version_tags = {**(tags or {}), METRIC_NAME_TAG: metric_name, METRIC_VALUE_TAG: repr(float(metric_value))}
    mv = client.create_model_version(name, source, run_id=run_id, tags=version_tags, model_id=model_id)
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    champion = _alias_version(client, name, CHAMPION)
    promoted, reason = _beats(client, name, champion, metric_name, float(metric_value))
    if promoted:
        _make_champion(client, name, mv.version)
    log.info("registered %s version %s (%s=%s): %s", name, mv.version, metric_name, metric_value, reason)
    return RegistrationResult(str(mv.version), promoted, champion, reason)


def promote(target: TrackingTarget, name: str, version: str | int) -> str:
    """Point ``champion`` at ``version`` unconditionally (a manual decision); returns the version."""
    client = target.client()
    version = _check_version(client, name, version)
    _make_champion(client, name, version)
    return version


def rollback(target: TrackingTarget, name: str, to_version: str | int | None = None) -> str:
    """Re-point ``champion`` to the previous champion, or to ``to_version``; returns the new champion.

    Rolling back to the previous champion drops the current one from the history, so repeated rollbacks
    walk further back. Rolling back to a given version records it as the newest champion.

    Raises
    ------
    TrackingError
        Unknown model or version, or no earlier champion recorded.
    """
    client = target.client()
    if to_version is not None:
        return promote(target, name, to_version)
    _check_model(client, name)
    current = _alias_version(client, name, CHAMPION)
    history = _history(client, name)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise TrackingError(f"model {name!r}: no champion before version {current} is recorded; "
                            "roll back to a given version instead (jobs/models.py rollback --to VERSION)")
    previous = history[-1]
    client.set_registered_model_alias(name, CHAMPION, previous)
    _write_history(client, name, history)
    log.info("model %s: champion rolled back from version %s to %s", name, current, previous)
    return previous


def list_versions(target: TrackingTarget, name: str) -> list[VersionInfo]:
    """All versions of ``name``, newest first, with their aliases and promotion metric."""
    client = target.client()
    aliases = _check_model(client, name).aliases or {}
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    out = []
    for mv in client.search_model_versions(f"name = '{_quote(name)}'"):
        tags = dict(mv.tags or {})
        value = tags.get(METRIC_VALUE_TAG)
        out.append(VersionInfo(str(mv.version), tuple(sorted(by_version.get(str(mv.version), []))), mv.run_id,
                               tags.get(METRIC_NAME_TAG), float(value) if value is not None else None,
                               int(mv.creation_timestamp or 0), tags))
    return sorted(out, key=lambda v: int(v.version), reverse=True)


def find_version(target: TrackingTarget, name: str, tag: str, value: str) -> VersionInfo | None:
    """The newest version of ``name`` whose tag ``tag`` is ``value``; None when there is none (or no such model)."""
    try:
        versions = list_versions(target, name)
    except TrackingError:
        return None
    return next((v for v in versions if v.tags.get(tag) == value), None)


def champion_history(target: TrackingTarget, name: str) -> list[str]:
    """Versions that were champion, oldest first (after rollbacks, the ones rolled back from are gone)."""
    client = target.client()
    _check_model(client, name)
    return _history(client, name)


def _beats(client: MlflowClient, name: str, champion: str | None, metric_name: str, value: float) -> tuple[bool, str]:
    if champion is None:
        return True, "no champion yet"
    tags = client.get_model_version(name, champion).tags or {}
    if tags.get(METRIC_NAME_TAG) != metric_name or METRIC_VALUE_TAG not in tags:
        return False, (f"champion version {champion} has no {metric_name!r} tag to compare with "
                       f"(it has {tags.get(METRIC_NAME_TAG)!r}); promote by hand if this one should win")
    best = float(tags[METRIC_VALUE_TAG])
    if value > best:
        return True, f"{metric_name} {value:.6g} beats champion version {champion} ({best:.6g})"
    return False, f"{metric_name} {value:.6g} does not beat champion version {champion} ({best:.6g})"


def _make_champion(client: MlflowClient, name: str, version: str) -> None:
    client.set_registered_model_alias(name, CHAMPION, version)
    history = _history(client, name)
    if not history or history[-1] != version:
        history.append(version)
    _write_history(client, name, history)


def _history(client: MlflowClient, name: str) -> list[str]:
    raw = (client.get_registered_model(name).tags or {}).get(HISTORY_TAG)
    try:
        return [str(v) for v in json.loads(raw)] if raw else []
    except (ValueError, TypeError):
        log.warning("model %s: unreadable %s tag %r; starting a new champion history", name, HISTORY_TAG, raw)
        return []


def _write_history(client: MlflowClient, name: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_KEEP:]))


def _model_source(client: MlflowClient, run_id: str, artifact_path: str) -> tuple[str, str | None]:
    """(source URI, logged model id) of the model ``artifact_path`` of ``run_id``."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"run {run_id!r} not found in {client.tracking_uri}: pass the run id that logged the model") from exc
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{_quote(run_id)}'")
    matching = [m for m in models if m.name == artifact_path]
    if matching:
        newest = max(matching, key=lambda m: m.creation_timestamp)
        # The storage location, not models:/<id>: the registry would resolve that through the *global*
        # tracking URI (an MLflow TODO), not this client's.
        return newest.artifact_location, newest.model_id
    if any(f.path == f"{artifact_path}/MLmodel" for f in client.list_artifacts(run_id, artifact_path)):
        return f"runs:/{run_id}/{artifact_path}", None
    names = sorted({m.name for m in models})
    raise TrackingError(f"run {run_id} has no model named {artifact_path!r}; its models: {names or 'none'}")


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)


def _check_model(client: MlflowClient, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        known = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise TrackingError(f"registered model {name!r} not found; registered models: {known or 'none'} "
                            "(set mlflow.registered_model or pass the right name)") from exc


def _check_version(client: MlflowClient, name: str, version: str | int) -> str:
    from mlflow.exceptions import MlflowException

    _check_model(client, name)
    try:
        return str(client.get_model_version(name, str(version)).version)
    except MlflowException as exc:
        known = sorted((int(mv.version) for mv in client.search_model_versions(f"name = '{_quote(name)}'")))
        raise TrackingError(f"model {name!r} has no version {str(version)!r}; versions: {known or 'none'}") from exc


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    aliases = client.get_registered_model(name).aliases or {}
    version = aliases.get(alias)
    return None if version is None else str(version)


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
