"""Logging set-up: our lines at run.log_level, every other library at run.library_log_level."""
from __future__ import annotations


def test_logging_shows_our_info_lines_and_other_libraries_warnings(capfd, monkeypatch):
    import logging

    import mlflow  # noqa: F401  (on import MLflow gives its logger its own handler at INFO)

    from dlspark.config import RunConfig
    from dlspark.runlog import setup_logging

    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "INFO")   # registers the variable so monkeypatch restores it
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL")
    mlflow_level = logging.getLogger("mlflow").level
    before = [(h, logging.getLogger().level) for h in logging.getLogger().handlers]
    try:
        setup_logging(RunConfig(), "run-1")
        logging.getLogger("dlspark.train.loop").info("ours")
        logging.getLogger("pipelines.train").info("pipeline")
        logging.getLogger("mlflow.store").info("library info")
        logging.info("root info")                         # horovod logs on the root logger
        logging.getLogger("petastorm").warning("library warning")
        err = capfd.readouterr().err
    finally:
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h, level in before:
            root.addHandler(h)
            root.setLevel(level)
        logging.getLogger("mlflow").setLevel(mlflow_level)
    assert "ours" in err and "pipeline" in err and "library warning" in err and "[run-1]" in err
    assert "library info" not in err and "root info" not in err
