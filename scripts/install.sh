#!/usr/bin/env bash
# Create .venv and install DetLab with the versions pinned in pyproject.toml.
# Idempotent: a second run with an unchanged pyproject.toml returns at once.
# mmcv 2.1.0 has no PyPI wheel for recent torch: take one that pip can find
# (an index, PIP_FIND_LINKS or our cache), else build it from the sdist once and
# keep the wheel in $DETLAB_WHEEL_CACHE for the next install.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${DETLAB_VENV:-$ROOT/.venv}
CACHE=${DETLAB_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/detlab/wheels}
PYTHON=${PYTHON:-python3}
STAMP=$VENV/.detlab-installed
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)

if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
  exit 0
fi
mkdir -p "$CACHE"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
pip_install() {  # pip, minus the warnings about unreachable extra index folders
  "$PY" -m pip install -q --disable-pip-version-check --find-links "$CACHE" "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

pin() {  # the exact pin of one dependency, from pyproject.toml
  "$PY" - "$1" <<'PY'
import sys, tomllib
name = sys.argv[1]
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    if dep.split("==")[0].split("[")[0] == name:
        print(dep)
        break
else:
    sys.exit(f"pyproject.toml pins no {name}")
PY
}

echo "detlab install: $VENV"
pip_install "$(pin torch)" "$(pin torchvision)" "$(pin numpy)"

MMCV=$(pin mmcv)
mmcv_ops_work() { "$PY" -c "from mmcv.ops import nms, RoIAlign" >/dev/null 2>&1; }
if ! mmcv_ops_work; then
  if ! pip_install --no-deps --only-binary mmcv "$MMCV" 2>/dev/null; then
    echo "detlab install: no $MMCV wheel found; building it from the sdist (about 20 min on 2 cores)"
    # mmcv's setup.py imports pkg_resources, gone from setuptools 70+
    pip_install "setuptools<70" wheel
    build=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary mmcv --no-build-isolation "$MMCV" -d "$build"
    tar -xzf "$build"/mmcv-*.tar.gz -C "$build"
    src=$(find "$build" -maxdepth 1 -type d -name 'mmcv-*' | head -n1)
    # torch 2.13+ headers need C++20
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "$PY" -m pip wheel --no-deps --no-build-isolation -w "$CACHE" "$src"
    rm -rf "$build"
    pip_install "setuptools>=77"  # what torch 2.14 asks for, back after the build
    pip_install --no-deps --only-binary mmcv "$MMCV"
  fi
fi

pip_install -e "$ROOT[dev]"
"$PY" -c "from mmcv.ops import nms, RoIAlign; import mmdet, mmpretrain" \
  || { echo "detlab install: mmcv ops do not import; see above" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "detlab install: done"
