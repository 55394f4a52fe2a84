"""What a trial reports (:class:`TrialOutcome`) and what a study writes back (best.yaml, trials.json). Pure code."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from dlspark.tuning.space import nest


@dataclass(frozen=True)
class TrialOutcome:
    """One trial's result, sent back from its Spark task: ``value`` None means it failed (``error`` says why)."""

    number: int
    value: float | None
    params: dict[str, Any]
    mlflow_run_id: str | None = None
    error: str | None = None
    seconds: float = 0.0
    where: dict[str, Any] = field(default_factory=dict)   # pid, host, partition of the task that ran it
    best_epoch: int | None = None

    @property
    def failed(self) -> bool:
        return self.value is None


def best_overlay(params: Mapping[str, Any]) -> dict[str, Any]:
    """The config layer that reproduces a trial: ``{"train": {...nested params...}}``."""
    return {"train": nest(params)}


def write_best_yaml(path: Path, params: Mapping[str, Any], *, header: str) -> Path:
    """Write the best trial's overlay to ``path`` (a ``--conf`` layer for ``jobs/train.py``), ``header`` as comments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    body = yaml.safe_dump(best_overlay(params), sort_keys=False, default_flow_style=False)
    path.write_text(comments + body, encoding="utf-8")
    return path


def trial_record(trial: Any) -> dict[str, Any]:
    """A JSON-able row for an Optuna ``FrozenTrial``: number, state, value, params and what the task recorded."""
    return {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": dict(trial.params),
            **{k: v for k, v in trial.user_attrs.items()}}


TRIALS_DDL = ("study string, number int, state string, value double, params_json string, mlflow_run_id string, "
              "error string, seconds double, best_epoch int")


def trials_table_rows(study: str, records: list[dict[str, Any]]) -> list[tuple]:
    """One row per trial record (:func:`trial_record`) for the study's trials table (``TRIALS_DDL``)."""
    def row(r: dict[str, Any]) -> tuple:
        value = None if r.get("value") is None else float(r["value"])
        seconds = None if r.get("seconds") is None else float(r["seconds"])
        return (study, int(r["number"]), r["state"], value, json.dumps(r["params"], sort_keys=True, default=str),
                r.get("mlflow_run_id"), r.get("error"), seconds, r.get("best_epoch"))
    return [row(r) for r in records]


def write_trials_json(path: Path, records: list[dict[str, Any]]) -> Path:
    """All trials of the study, one record each (see :func:`trial_record`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2, default=str), encoding="utf-8")
    return path


def outcome_attrs(outcome: TrialOutcome) -> dict[str, Any]:
    """What the study keeps per trial as user attributes (JSON-able; the error text trimmed to 2000 chars)."""
    attrs = {k: v for k, v in asdict(outcome).items() if k in ("mlflow_run_id", "seconds", "where", "best_epoch")}
    if outcome.error:
        attrs["error"] = outcome.error[-2000:]
    return attrs
