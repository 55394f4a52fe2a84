"""What the notebooks in ``notebooks/`` share: parameters, config, the session, and conversion to Jupyter.

Parameters come from a Databricks widget when ``dbutils`` exists, else from the environment variable
``DLSPARK_NB_<NAME>``, else the default. Config is built as the jobs build it (``dlspark.config.load_config``
with pipeline layers and ``--set``-style overrides), so a notebook and ``jobs/<name>.py`` with the same
settings do the same thing. The notebooks are Databricks source files (``# COMMAND ----------`` between
cells, ``# MAGIC %md`` for markdown); :func:`to_notebook` turns one into an nbformat notebook:

    .venv/bin/python -m dlspark.notebook notebooks/01_ingest.py /tmp/01_ingest.ipynb
"""
from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dlspark.config import AppConfig, load_config
from dlspark.runlog import new_run_id, setup_logging

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

ENV_PREFIX = "DLSPARK_NB_"
HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
MAGIC = "# MAGIC"
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def widget(name: str, default: str, *, label: str | None = None, dbutils: Any = None) -> str:
    """A notebook parameter: Databricks widget, else ``$DLSPARK_NB_<NAME>``, else ``default``.

    Parameters
    ----------
    name : str
        Widget name (letters, digits, underscores); the environment variable is ``DLSPARK_NB_`` + ``name.upper()``.
    default : str
        Value when neither a widget nor the environment variable sets one.
    label : str, optional
        Widget label shown on Databricks (default: ``name``).
    dbutils : object, optional
        Databricks ``dbutils``; by default looked up in the IPython user namespace.

    Returns
    -------
    str
        The value, as a string (widgets hold strings).
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"widget name {name!r}: use letters, digits and underscores (it also names ${ENV_PREFIX}<NAME>)")
    dbutils = dbutils if dbutils is not None else _find_dbutils()
    if dbutils is not None:
        dbutils.widgets.text(name, default, label or name)
        return str(dbutils.widgets.get(name))
    return os.environ.get(ENV_PREFIX + name.upper(), default)


def flag(name: str, default: bool, **kwargs: Any) -> bool:
    """A true/false parameter (``true/false``, ``1/0``, ``yes/no``, ``on/off``), read like :func:`widget`."""
    raw = widget(name, "true" if default else "false", **kwargs).strip().lower()
    if raw not in TRUE + FALSE:
        raise ValueError(f"parameter {name}={raw!r}: expected one of {', '.join(TRUE + FALSE)} "
                         f"(widget {name} or ${ENV_PREFIX}{name.upper()})")
    return raw in TRUE


def integer(name: str, default: int, **kwargs: Any) -> int:
    """A whole-number parameter, read like :func:`widget`."""
    raw = widget(name, str(default), **kwargs).strip()
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"parameter {name}={raw!r}: expected a whole number "
                         f"(widget {name} or ${ENV_PREFIX}{name.upper()})") from None


def overrides(name: str = "set", **kwargs: Any) -> list[str]:
    """Extra ``key.path=value`` overrides from one parameter, separated by ``;`` or newlines (as ``--set``)."""
    raw = widget(name, "", **kwargs)
    return [item.strip() for item in re.split(r"[;\n]", raw) if item.strip()]


def notebook_config(pipeline: str | Sequence[str] | None, sets: Sequence[str] = (), *, profile: str = "local",
                    conf_dir: str | None = None) -> AppConfig:
    """The config a job would load with ``--profile profile --set ...``: ``sets`` first, then the ``set`` parameter.

    Raises
    ------
    dlspark.config.ConfigError
        On an unknown key or bad value, naming the key (as the jobs do).
    """
    return load_config(profile=profile, pipeline=pipeline, conf_dir=conf_dir, overrides=[*sets, *overrides()])


def new_run(cfg: AppConfig) -> str:
    """A new run id, with logging configured for it as the jobs do; returns the id."""
    run_id = new_run_id()
    setup_logging(cfg.run, run_id)
    return run_id


def get_spark(cfg: AppConfig) -> "SparkSession":
    """The active SparkSession (Databricks' ``spark``), else one built from ``cfg.spark`` as the jobs build it."""
    from pyspark.sql import SparkSession

    from dlspark.spark.connect import is_connect, spark_master

    active = SparkSession.getActiveSession()
    if active is not None:
        log.warning("using the active SparkSession (%s%s); the config's spark.* settings are not applied",
                    "Spark Connect, " if is_connect(active) else "", spark_master(active))
        return active
    from dlspark.spark.session import build_spark_session

    return build_spark_session(cfg.spark)


def split_cells(source: str) -> list[tuple[str, str]]:
    """``(kind, text)`` per cell of a Databricks source file; kind is ``code``, ``markdown`` or ``raw``.

    ``# MAGIC %md`` cells become markdown (the ``# MAGIC`` prefixes removed), other ``# MAGIC`` cells
    (``%pip``, ``%sql`` ...) raw cells, so that they are kept but not run by a Python kernel.
    """
    lines = source.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise ValueError(f"not a Databricks source notebook: the first line must be {HEADER!r}")
    cells, current = [], []
    for line in [*lines[1:], SEPARATOR]:
        if line.strip() != SEPARATOR:
            current.append(line)
            continue
        text = "\n".join(current).strip("\n")
        current = []
        if text.strip():
            cells.append(_cell(text))
    return cells


def to_notebook(source: str) -> Any:
    """A Databricks source notebook as an ``nbformat`` v4 notebook with a Python 3 kernelspec."""
    import nbformat.v4 as v4

    make = {"code": v4.new_code_cell, "markdown": v4.new_markdown_cell, "raw": v4.new_raw_cell}
    nb = v4.new_notebook(cells=[make[kind](text) for kind, text in split_cells(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def convert(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write ``src`` (a Databricks source notebook) as an ``.ipynb`` at ``dest``; returns ``dest``."""
    import nbformat

    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(to_notebook(Path(src).read_text(encoding="utf-8")), str(out))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dlspark.notebook SRC.py [DEST.ipynb]`` (default DEST: SRC with suffix .ipynb)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2):
        sys.stderr.write("usage: python -m dlspark.notebook SRC.py [DEST.ipynb]\n")
        return 2
    src = Path(args[0])
    convert(src, args[1] if len(args) == 2 else src.with_suffix(".ipynb"))
    return 0


def _cell(text: str) -> tuple[str, str]:
    body = text.splitlines()
    if not all(line.startswith(MAGIC) or not line.strip() for line in body):
        return "code", text
    stripped = [line[len(MAGIC):].removeprefix(" ") for line in body]
    if stripped and stripped[0].strip() == "%md":
        return "markdown", "\n".join(stripped[1:]).strip("\n")
    if stripped and stripped[0].startswith("%md "):
        return "markdown", "\n".join([stripped[0][4:], *stripped[1:]]).strip("\n")
    return "raw", "\n".join(stripped)


def _find_dbutils() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else shell.user_ns.get("dbutils")


if __name__ == "__main__":
    sys.exit(main())
