"""Hyperparameter search: an Optuna study on the driver, trials on Spark executors, each a nested MLflow run.

Pure: ``space`` (search space -> suggestions -> per-trial TrainConfig) and ``results`` (outcomes, best.yaml).
Driver: ``study`` (storage, resume, ask/tell). Executors: ``trial`` (one trial in a task); ``spark_trials`` runs
a batch of them as one Spark job. ``pipelines/tune.py`` composes them.
"""
from dlspark.tuning.results import TrialOutcome, best_overlay, write_best_yaml
from dlspark.tuning.space import apply_params, nest, suggest, validate_space

__all__ = ["TrialOutcome", "apply_params", "best_overlay", "nest", "suggest", "validate_space", "write_best_yaml"]
