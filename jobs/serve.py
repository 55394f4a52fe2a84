"""Serve a registered model over HTTP: micro-batched predictions, hot reload when its alias moves.

    python jobs/serve.py --pipeline image_classification
    python jobs/serve.py --pipeline sentiment --set serve.port=8001 --set serve.model=models:/dlspark-sentiment/2

The model defaults to models:/<mlflow.registered_model>@champion (serve.model takes any version, alias or
runs:/ URI). Images are decoded as ingest decoded them (conf/pipelines/ingest_images.yaml is applied before
the pipeline's layer), texts normalised and tokenized as ingest_text did. Endpoints: POST /predict
(image bytes, text, JSON, multipart/form-data), POST /feedback, GET /health, /ready, /metrics, /rollout;
KServe v2 (/v2/models/{name}/infer, /v2/health/ready, GET /v2/models/{name}) and TF-Serving REST
(/v1/models/{name}:predict). GET /similar?id=KEY and POST /similar (an image or text): the nearest rows from the
embeddings index that jobs/embed.py built for the served version (serve.similar). A challenger beside the
champion (A/B, canary, shadow, automatic rollback): --set serve.rollout.mode=canary. Settings: conf/base.yaml
section serve (binds 127.0.0.1 by default).
Exit codes: 0 stopped, 1 failed, 2 bad configuration.
"""
from __future__ import annotations

import sys
from typing import Sequence

from dlspark.cli import config_from_args, job_parser, run_job
from dlspark.runlog import new_run_id, setup_logging

# Each pipeline's model was trained on what its ingest layer produced; serving decodes inputs the same way.
PIPELINES = {"image_classification": ["ingest_images", "image_classification"],
             "sentiment": ["ingest_text", "sentiment"]}


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from dlspark.serving import create_app
    from dlspark.serving.factory import versions_from_config

    parser = job_parser(__doc__)
    parser.add_argument("--pipeline", choices=list(PIPELINES), default="image_classification",
                        help="which conf/pipelines layers to apply (default image_classification)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, pipeline=PIPELINES[args.pipeline])
    run_id = new_run_id()
    setup_logging(cfg.run, run_id)
    served = versions_from_config(cfg)
    app = create_app(served.champion, cfg.serve, challenger=served.challenger, recorder=served.recorder,
                     similar=served.similar)
    rollout = f", {cfg.serve.rollout.mode} challenger {served.challenger_uri}" if served.challenger_uri else ""
    print(f"serve {run_id}: {served.champion_uri}{rollout} on http://{cfg.serve.host}:{cfg.serve.port}", flush=True)
    uvicorn.run(app, host=cfg.serve.host, port=cfg.serve.port, log_level=cfg.run.log_level.lower(),
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
