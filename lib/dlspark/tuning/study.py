"""The driver's Optuna study: RDB storage (resume by name), seeded sampler, ask in batches, tell outcomes.

The study lives in ``tune.storage`` (default ``sqlite:///<data_dir>/<tune.output_dir>/<study>.db``), so rerunning
with the same study name continues it: only the trials still missing from ``tune.n_trials`` run. Trials left
RUNNING by a killed driver are closed as FAIL and, like trials cut short by an interrupt, do not count as done.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from dlspark.config import AppConfig, ConfigError
from dlspark.paths import is_uri, resolve_path
from dlspark.tuning.results import TrialOutcome, outcome_attrs

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"


def study_name(cfg: AppConfig) -> str:
    """``tune.study``, or ``tune-<train.task>``."""
    return cfg.tune.study or f"tune-{cfg.train.task}"


def output_dir(cfg: AppConfig) -> str:
    """``<data_dir>/<tune.output_dir>/<study>``: best.yaml, trials.json and the trials' checkpoints."""
    return f"{resolve_path(cfg.paths.data_dir, cfg.tune.output_dir).rstrip('/')}/{study_name(cfg)}"


def storage_url(cfg: AppConfig) -> str:
    """``tune.storage``, or a sqlite file beside the study's output folder (which must then be local)."""
    if cfg.tune.storage:
        return cfg.tune.storage
    root = resolve_path(cfg.paths.data_dir, cfg.tune.output_dir)
    if is_uri(root) and not root.startswith("file:"):
        raise ConfigError(f"tune.storage is null, so the study would be a sqlite file under {root!r}, which is not a "
                          "local folder; set tune.storage to an RDB URL (e.g. postgresql://...) or use a local data_dir")
    folder = Path(root.removeprefix("file://").removeprefix("file:"))
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / study_name(cfg)}.db"


def direction(monitor: str) -> Literal["minimize", "maximize"]:
    """``minimize`` for a loss, else ``maximize``."""
    return "minimize" if monitor.endswith("loss") else "maximize"


def open_study(cfg: AppConfig) -> "optuna.Study":
    """Create the study, or load it when one of that name exists in the storage.

    The sampler is seeded with ``train.seed`` plus the number of trials already in the study, so a resumed
    study is reproducible without re-drawing the first trials' params.

    Raises
    ------
    ConfigError
        The stored study optimises in the other direction (``train.monitor`` changed since it was created).
    """
    import optuna

    want = direction(cfg.train.monitor)
    study = optuna.create_study(study_name=study_name(cfg), storage=storage_url(cfg), direction=want,
                                load_if_exists=True, sampler=_sampler(cfg, 0))
    have = study.direction.name.lower()
    if have != want:
        raise ConfigError(f"tune.study {study.study_name!r} in {storage_url(cfg)} was created to {have} but train.monitor="
                          f"{cfg.train.monitor!r} needs {want}; pick another tune.study or set train.monitor back")
    if study.trials:
        study.sampler = _sampler(cfg, len(study.trials))
    return study


def _sampler(cfg: AppConfig, offset: int) -> "optuna.samplers.BaseSampler":
    import optuna

    seed = cfg.train.seed + offset
    if cfg.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # liar: batches of asks spread out


def close_stale(study: "optuna.Study") -> int:
    """Close trials left RUNNING (a killed driver) as FAIL; return how many. They never reported, so they
    do not count as done (see :func:`remaining`)."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
    if stale:
        log.warning("closed %d trials left running by an earlier, interrupted run as FAIL: %s",
                    len(stale), [t.number for t in stale])
    return len(stale)


def remaining(study: "optuna.Study", n_trials: int) -> int:
    """How many trials are still to run: ``n_trials`` minus the finished ones. A FAIL counts only when its task
    reported (a failed training); trials cut short by an interrupted or killed driver run again."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()
            and (t.state != TrialState.FAIL or "seconds" in t.user_attrs)]
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if waiting:
        log.info("%d enqueued trials will run first: %s", len(waiting), [t.number for t in waiting])
    return max(0, n_trials - len(done))


def tell(study: "optuna.Study", trials: Sequence["optuna.Trial"], outcomes: Sequence[TrialOutcome]) -> None:
    """Report each outcome to its trial: COMPLETE with its value, or FAIL (the error kept as a user attr)."""
    from optuna.trial import TrialState

    by_number = {o.number: o for o in outcomes}
    for trial in trials:
        outcome = by_number[trial.number]
        for key, value in outcome_attrs(outcome).items():
            trial.set_user_attr(key, value)
        if outcome.failed:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, outcome.value)


def fail_interrupted(study: "optuna.Study", trials: Sequence["optuna.Trial"], reason: str) -> None:
    """Close asked trials that never reported (the driver is stopping) as FAIL, marked interrupted."""
    from optuna.trial import TrialState

    for trial in trials:
        try:
            trial.set_user_attr(INTERRUPTED, True)
            trial.set_user_attr("error", reason)
            study.tell(trial, state=TrialState.FAIL)
        except Exception:  # noqa: BLE001 - already told; keep closing the others
            log.debug("trial %d already finished", trial.number)


def failures(study: "optuna.Study") -> list[dict[str, Any]]:
    """``{"number", "error"}`` of every failed trial."""
    from optuna.trial import TrialState

    return [{"number": t.number, "error": t.user_attrs.get("error", "")}
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
