"""Run Spark code under ANSI mode on (Spark 4's default) and off (3.5's default)."""
from __future__ import annotations

import contextlib
from typing import Iterator

ANSI_MODES = ["ansi_on", "ansi_off"]


@contextlib.contextmanager
def ansi_conf(spark, mode: str) -> Iterator[None]:
    """``spark.sql.ansi.enabled`` set for ``mode`` (one of ``ANSI_MODES``) for the block."""
    from dlspark.spark.session import session_conf

    assert mode in ANSI_MODES, mode
    with session_conf(spark, {"spark.sql.ansi.enabled": str(mode == "ansi_on").lower()}):
        yield
