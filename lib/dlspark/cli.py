"""Shared command-line surface of the jobs: config layers, overrides, and error-to-exit-code mapping."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Sequence

from dlspark.config import PROFILES, AppConfig, ConfigError, load_config
from dlspark.runlog import new_run_id, setup_logging

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG = 0, 1, 2


def job_parser(description: str | None) -> argparse.ArgumentParser:
    """An argparse parser with the options every job takes."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="local", help=f"environment profile: {', '.join(PROFILES)} (default local)")
    parser.add_argument("--conf", action="append", default=[], metavar="FILE", help="extra YAML layer (repeatable)")
    parser.add_argument("--conf-dir", default=None, help="config folder (default: the repo's conf/ or $DLSPARK_CONF_DIR)")
    parser.add_argument(
        "--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
        help="override one key, value parsed as YAML, e.g. --set ingest_images.size=[64,64] (repeatable)",
    )
    return parser


def config_from_args(args: argparse.Namespace, pipeline: str | Sequence[str] | None) -> AppConfig:
    """Load and validate the config named by the parsed arguments."""
    return load_config(
        profile=args.profile, pipeline=pipeline, conf_dir=args.conf_dir, extra_files=args.conf, overrides=args.overrides
    )


def run_job(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a job's ``main``: a bad config exits 2 with the message, any other failure exits 1."""
    try:
        return main(argv)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except Exception:  # noqa: BLE001 - the job boundary: log with traceback, return an exit code
        log.exception("job failed")
        return EXIT_FAILED


def run_spark_pipeline(
    argv: Sequence[str] | None, *, description: str | None, pipeline: str | Sequence[str] | None,
    fn: Callable[[Any, AppConfig, str], Any], choices: Sequence[str] = (),
) -> tuple[str, Any]:
    """What every Spark job does: parse args, load config, start logging with a run id, build the
    session, and call ``fn(spark, cfg, run_id)``. Returns (run_id, whatever ``fn`` returns).

    With ``choices``, the job takes ``--pipeline NAME`` (one of them, default the first): that config
    layer is applied after ``pipeline``'s.
    """
    from dlspark.spark.session import build_spark_session

    parser = job_parser(description)
    if choices:
        parser.add_argument("--pipeline", choices=list(choices), default=choices[0],
                            help=f"which conf/pipelines/<name>.yaml to apply (default {choices[0]})")
    args = parser.parse_args(argv)
    layers = [pipeline] if isinstance(pipeline, str) else list(pipeline or [])
    cfg = config_from_args(args, pipeline=layers + ([args.pipeline] if choices else []))
    run_id = new_run_id()
    setup_logging(cfg.run, run_id)
    return run_id, fn(build_spark_session(cfg.spark), cfg, run_id)
