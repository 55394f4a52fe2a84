#!/usr/bin/env bash
# Submit a job to Spark with this repo's package, config and interpreter.
#
#   ./spark-submit.sh [SPARK-SUBMIT OPTIONS] JOB [JOB ARGS...]
#
# The master and deploy mode come from the job's own --profile NAME (default local), --conf FILE and
# --set KEY=VALUE arguments, read with dlspark.config.load_config, so spark-submit and the job agree.
# What it ships and sets:
#   --py-files build/spark-submit/dlspark-<digest>.zip   the dlspark wheel (lib/ + pipelines/), one per source state
#   --archives build/spark-submit/conf.zip#conf  cluster deploy mode only; DLSPARK_CONF_DIR=./conf on the driver
#   PYSPARK_PYTHON         env, else the profile's spark.python, else .venv/bin/python (absolute)
#   PYSPARK_DRIVER_PYTHON  env, else .venv/bin/python (client mode); DLSPARK_CONF_DIR=<repo>/conf (client mode)
#   HF_HUB_OFFLINE=1, --driver-memory from spark.driver_memory
#   --driver-java-options -Dlog4j2.configurationFile=conf/log4j2.properties   client mode: Spark logs WARN and up
#                          (give your own --driver-java-options to replace it)
# Options before JOB go to spark-submit; --archives and --py-files are merged with the ones above.
# The exit code is the job's (2 = bad config).
#
# Examples:
#   ./spark-submit.sh jobs/spark_smoke.py --out data/smoke.json                    # local[*]
#   make cluster-up                                                                # spark://127.0.0.1:7077
#   ./spark-submit.sh jobs/ingest_images.py --profile standalone
#   ./spark-submit.sh jobs/spark_smoke.py --profile standalone --set spark.master=spark://127.0.0.1:7078 --out /tmp/s.json
#   # YARN with a packed venv (venv-pack -o env.tar.gz); the yarn profile sets spark.python=./environment/bin/python
#   ./spark-submit.sh --archives env.tar.gz#environment jobs/ingest_text.py --profile yarn
#   ./spark-submit.sh --archives env.tar.gz#environment jobs/ingest_text.py --profile yarn --set spark.deploy_mode=cluster
#
# Environment: SPARK_HOME (default: the pip pyspark package), DLSPARK_PYTHON (default <repo>/.venv/bin/python,
# <repo>/.venv-modern/bin/python with STACK=modern),
# DLSPARK_SUBMIT_DRY_RUN=1 (print the spark-submit command and the exported variables instead of running it).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "${STACK:-classic}" in modern) VENV=.venv-modern ;; *) VENV=.venv ;; esac  # make ... STACK=modern
PY=${DLSPARK_PYTHON:-$REPO/$VENV/bin/python}
BUILD=$REPO/build/spark-submit

say() { printf '[spark-submit.sh] %s\n' "$*" >&2; }
die() { printf '[spark-submit.sh] ERROR: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
join_by_comma() { local IFS=,; echo "$*"; }

submit_opts=(); archives=(); py_files=()
while [ $# -gt 0 ] && [[ $1 == -* ]]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --master|--master=*|--deploy-mode|--deploy-mode=*)
            die "$1: set spark.master / spark.deploy_mode in the profile or with --set after JOB" ;;
        --archives) [ $# -ge 2 ] || die "--archives needs a value"; archives+=("$2"); shift 2 ;;
        --archives=*) archives+=("${1#*=}"); shift ;;
        --py-files) [ $# -ge 2 ] || die "--py-files needs a value"; py_files+=("$2"); shift 2 ;;
        --py-files=*) py_files+=("${1#*=}"); shift ;;
        -v|--verbose|--supervise) submit_opts+=("$1"); shift ;;
        --*=*) submit_opts+=("$1"); shift ;;
        *) [ $# -ge 2 ] || die "$1 needs a value"; submit_opts+=("$1" "$2"); shift 2 ;;
    esac
done
[ $# -ge 1 ] || { usage >&2; exit 2; }
JOB=$1; shift
[ -f "$JOB" ] || die "job file not found: $JOB"
[ -x "$PY" ] || die "$PY not found: run 'make setup' (or set DLSPARK_PYTHON)"

# master, deploy mode, profile python, driver memory: one per line; a bad config exits 2 here.
settings=$("$PY" -m dlspark.spark.packaging settings -- "$@") || exit $?
mapfile -t s <<< "$settings"
MASTER=${s[0]}; DEPLOY_MODE=${s[1]}; PROFILE_PYTHON=${s[2]}; DRIVER_MEMORY=${s[3]}

bundle=$("$PY" -m dlspark.spark.packaging bundle --repo "$REPO" --build-dir "$BUILD") || die "could not build the --py-files bundle"
mapfile -t b <<< "$bundle"
py_files=("${b[0]}" "${py_files[@]+"${py_files[@]}"}")

SPARK_HOME=${SPARK_HOME:-$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}
export SPARK_HOME HF_HUB_OFFLINE=1
conf=(--conf spark.executorEnv.HF_HUB_OFFLINE=1)
if [ "$DEPLOY_MODE" = cluster ]; then
    # The driver runs in the cluster: it needs the shipped conf/ and the cluster-side interpreter.
    EXEC_PYTHON=${PYSPARK_PYTHON:-${PROFILE_PYTHON:-python3}}
    archives=("${b[1]}#conf" "${archives[@]+"${archives[@]}"}")
    conf+=(--conf "spark.pyspark.python=$EXEC_PYTHON" --conf "spark.pyspark.driver.python=$EXEC_PYTHON")
    for prefix in spark.yarn.appMasterEnv spark.kubernetes.driverEnv; do
        conf+=(--conf "$prefix.DLSPARK_CONF_DIR=./conf" --conf "$prefix.HF_HUB_OFFLINE=1")
    done
else
    export PYSPARK_PYTHON=${PYSPARK_PYTHON:-${PROFILE_PYTHON:-$PY}}
    export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$PY}
    export DLSPARK_CONF_DIR=${DLSPARK_CONF_DIR:-$REPO/conf}
fi
[ ${#archives[@]} -eq 0 ] || conf+=(--archives "$(join_by_comma "${archives[@]}")")
# Spark's JVM logs warnings only (conf/log4j2.properties), unless the caller gives its own driver Java options.
if [ "$DEPLOY_MODE" = client ] && [[ " ${submit_opts[*]+"${submit_opts[*]}"} " != *" --driver-java-options"* ]]; then
    conf+=(--driver-java-options "-Dlog4j2.configurationFile=file:$REPO/conf/log4j2.properties")
fi

cmd=("$SPARK_HOME/bin/spark-submit" --master "$MASTER" --deploy-mode "$DEPLOY_MODE"
     --driver-memory "$DRIVER_MEMORY" --py-files "$(join_by_comma "${py_files[@]}")"
     "${conf[@]}" "${submit_opts[@]+"${submit_opts[@]}"}" "$JOB" "$@")
if [ -n "${DLSPARK_SUBMIT_DRY_RUN:-}" ]; then
    for var in PYSPARK_PYTHON PYSPARK_DRIVER_PYTHON DLSPARK_CONF_DIR HF_HUB_OFFLINE; do
        printf '%s=%s\n' "$var" "${!var:-}"
    done
    printf '%s\n' "${cmd[@]}"
    exit 0
fi
say "master=$MASTER deploy-mode=$DEPLOY_MODE py-files=$(join_by_comma "${py_files[@]}")"
exec "${cmd[@]}"
