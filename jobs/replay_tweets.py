"""Replay the labelled tweets as JSON-line files into the stream's landing folder at a fixed rate.

    .venv/bin/python jobs/replay_tweets.py --rate 50 --seconds 60                 # into <data_dir>/<stream.input>
    .venv/bin/python jobs/replay_tweets.py --rate 200 --tick 0.5 --malformed 0.02 --out /tmp/landing
    .venv/bin/python jobs/replay_tweets.py --synthetic 300 --rate 100 --no-pace   # short generated texts, at once

One file per tick (rate x tick lines), written under a hidden name and renamed, so the file source never
reads a partial file. Event times (created_at) start now and are 1/rate seconds apart. Needs no Spark.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from dlspark.cli import config_from_args, job_parser, run_job
from dlspark.datasets.replay import ReplaySpec, replay, synthetic_messages, tweet_messages
from dlspark.datasets.tweets import tweets_csv_path
from dlspark.paths import resolve_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__)
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second (default 50)")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between files (default 1)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: all tweets)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many messages")
    parser.add_argument("--malformed", type=float, default=0.0, help="fraction of malformed lines (default 0)")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N", help="N generated messages instead of tweets")
    parser.add_argument("--no-pace", action="store_true", help="write every file at once")
    parser.add_argument("--prefix", default=None, help="file name prefix (default replay-<UTC time>)")
    parser.add_argument("--out", default=None, help="folder to write into (default <paths.data_dir>/<stream.input>)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, pipeline="sentiment")
    out = Path(args.out or resolve_path(cfg.paths.data_dir, cfg.stream.input))
    now = datetime.now(timezone.utc)
    spec = ReplaySpec(rate=args.rate, tick_s=args.tick, malformed_fraction=args.malformed,
                      prefix=args.prefix or f"replay-{now:%Y%m%dT%H%M%S}")
    messages = (synthetic_messages(args.synthetic, start=now, spacing_s=1 / args.rate) if args.synthetic is not None else
                tweet_messages(tweets_csv_path(), start=now, spacing_s=1 / args.rate, limit=args.limit))
    report = replay(messages, out, spec, pace=not args.no_pace, max_seconds=args.seconds)
    print(f"replay_tweets: {report.lines} lines ({len(report.ids)} valid, malformed {report.malformed}) in "
          f"{len(report.files)} files into {out} over {report.seconds:.1f} s "
          f"({report.lines / max(report.seconds, 1e-9):.1f} lines/s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
