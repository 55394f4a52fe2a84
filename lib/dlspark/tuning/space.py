"""The search space: ``tune.space`` -> Optuna suggestions -> a validated per-trial ``TrainConfig``. Pure code.

Keys are ``train.*`` names, dotted below ``train`` (``lr``, ``feed.batch_size``); ``dlspark.config`` has
already checked that each names a tunable TrainConfig value. :func:`validate_space` goes further and builds a
TrainConfig at every range end and choice, so a range or choice the training could never accept fails before
any trial starts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from dlspark.config import ConfigError, TrainConfig, to_dict
from dlspark.config.schema import TuneConfig, TuneParamConfig
from dlspark.config.typed import build

if TYPE_CHECKING:
    import optuna

CAPS = ("epochs", "limit_rows", "max_steps_per_epoch")


def suggest(trial: "optuna.Trial", space: Mapping[str, TuneParamConfig]) -> dict[str, Any]:
    """One value per key of ``space`` from ``trial`` (an Optuna Trial or FixedTrial), in ``space`` order."""
    return {key: _suggest_one(trial, key, param) for key, param in space.items()}


def _suggest_one(trial: "optuna.Trial", key: str, p: TuneParamConfig) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(key, list(p.choices or ()))
    log = p.log or p.type == "loguniform"
    if p.type == "int":
        return trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=log)  # type: ignore[arg-type]
    return trial.suggest_float(key, float(p.low), float(p.high), step=p.step, log=log)  # type: ignore[arg-type]


def apply_params(train: TrainConfig, params: Mapping[str, Any], tune: TuneConfig | None = None,
                 **fixed: Any) -> TrainConfig:
    """``train`` with the trial caps of ``tune``, then ``params`` (dotted keys), then ``fixed`` set, re-validated.

    Raises
    ------
    ConfigError
        A value TrainConfig does not accept, naming the ``train.*`` key.
    """
    data = to_dict(train)
    for cap in CAPS:
        value = getattr(tune, cap) if tune is not None else None
        if value is not None:
            data[cap] = value
    for key, value in {**params, **fixed}.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return build(TrainConfig, data, "train")


def validate_space(train: TrainConfig, tune: TuneConfig) -> None:
    """Check that every range end and choice of ``tune.space`` gives a valid TrainConfig.

    Raises
    ------
    ConfigError
        An empty space, an ``int`` range on a float key (or the reverse), or a value training rejects.
    """
    if not tune.space:
        raise ConfigError("tune.space is empty: give the train.* keys to search, e.g. "
                          "--set 'tune.space={lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}'")
    for key, p in tune.space.items():
        if p.type == "int" and not (float(p.low).is_integer() and float(p.high).is_integer()):  # type: ignore[arg-type]
            raise ConfigError(f"tune.space.{key}: an int range needs whole low/high, got {p.low}..{p.high}")
        values = list(p.choices or ()) if p.type == "categorical" else _range_ends(p)
        for value in values:
            try:
                apply_params(train, {key: value}, tune)
            except ConfigError as exc:
                raise ConfigError(f"tune.space.{key}: {value!r} is not a value training accepts ({exc})") from None


def _range_ends(p: TuneParamConfig) -> list[Any]:
    cast = int if p.type == "int" else float
    return [cast(p.low), cast(p.high)]  # type: ignore[arg-type]


def nest(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested mappings: ``{"feed.batch_size": 64}`` -> ``{"feed": {"batch_size": 64}}``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
