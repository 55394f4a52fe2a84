"""Skip marks for what only one stack has: petastorm (classic), horovod, TensorFlow, a classic SparkSession."""
from __future__ import annotations

import importlib.util

import pytest

_WHERE = {
    "petastorm": "the classic stack only (make setup): petastorm has no release for pyarrow >= 15",
    "horovod": "built by make setup (SKIP_HOROVOD unset)",
    "tensorflow": "both stacks install tensorflow-cpu",
}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def needs(module: str) -> pytest.MarkDecorator:
    """Skip (with the reason and where the package comes from) when ``module`` is not importable."""
    return pytest.mark.skipif(not installed(module), reason=f"{module} is not installed; it comes with {_WHERE.get(module, 'its extra')}")


def no_cached_frames(spark) -> bool:
    """True when the session holds no persisted DataFrame. Classic sessions only: Spark Connect has no API that
    lists them, so over Connect this checks nothing and says so by skipping the rest of the test."""
    from dlspark.spark.connect import is_connect

    if is_connect(spark):
        pytest.skip("Spark Connect cannot list persisted DataFrames; the release of cached frames is checked on classic")
    return spark._jsparkSession.sharedState().cacheManager().isEmpty()


_CONNECT_STATE = ("SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "SPARK_REMOTE", "SPARK_CONNECT_AUTHENTICATE_TOKEN")


def child_connect(env: dict[str, str]) -> list[str]:
    """For a job or kernel started by a test: under ``DLSPARK_TEST_REMOTE`` the child is a Spark Connect client too,
    of an in-process server of its own that dies with it. Edits ``env`` in place; returns the ``--set`` values."""
    import os

    remote = os.environ.get("DLSPARK_TEST_REMOTE")
    if not remote:
        return []
    for inherited in _CONNECT_STATE:  # this process's server state, which would make the child reuse it
        env.pop(inherited, None)
    env["SPARK_TESTING"] = "1"  # pyspark's switch for an in-process server on a free port (this process may hold 15002)
    return [f"spark.remote={remote}"]


def once_per_ci(reason: str) -> pytest.MarkDecorator:
    """Skip on the modern stack a slow test whose subject is the same code on both stacks (same torch, TF and
    captum; no pyarrow or pyspark behaviour in question), so CI runs it once, on the classic stack. ``reason``
    says why the modern run adds nothing."""
    import sys
    from pathlib import Path

    modern = Path(sys.prefix).name == ".venv-modern"
    return pytest.mark.skipif(modern, reason=f"runs on the classic stack only: {reason}")
