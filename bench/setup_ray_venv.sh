#!/usr/bin/env bash
# Ray Data for the ingest and inference benchmarks' contenders, in its own venv: Ray Data needs pyarrow >= 17, which the
# classic stack (petastorm) cannot have. Idempotent; about 1 minute on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RAY_VENV:-.venv-ray}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import ray.data, tokenizers, onnxruntime" 2>/dev/null || \
  "$VENV/bin/pip" install -q "ray[data]==2.58.*" "pyarrow>=17" numpy pandas pillow tokenizers onnxruntime
"$VENV/bin/python" -c "import ray, pyarrow; print('ray', ray.__version__, 'pyarrow', pyarrow.__version__)"
