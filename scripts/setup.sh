#!/usr/bin/env bash
# One idempotent set-up: venv, pinned wheels, patched ROS CMake exports, both interface packages.
# A second run checks stamps and returns in about a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CASCADE_SD_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
BUILD="$ROOT/build"
STAMPS="$VENV/.cascade_sd_stamps"

die() { echo "setup: error: $*" >&2; exit 1; }
log() { echo "setup: $*"; }

# --- what the machine must bring -----------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found. Python 3.11 is required (set PYTHON=/path/to/python3.11)."
pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
  || die "'$PYTHON' does not run. Python 3.11 is required (set PYTHON=/path/to/python3.11)."
[ "$pyver" = "3.11" ] || die "'$PYTHON' is Python $pyver; this project pins wheels for Python 3.11 (set PYTHON=/path/to/python3.11)."
command -v cmake >/dev/null 2>&1 || die "cmake not found; install it (Debian: apt-get install cmake). It builds msg/."
command -v "${CC:-cc}" >/dev/null 2>&1 || die "no C compiler ('${CC:-cc}'); install one (Debian: apt-get install build-essential)."
command -v "${CXX:-c++}" >/dev/null 2>&1 || die "no C++ compiler ('${CXX:-c++}'); install one (Debian: apt-get install build-essential)."
cmake_ver="$(cmake --version | head -1 | grep -oE '[0-9]+\.[0-9]+')"
[ "$(printf '%s\n3.16\n' "$cmake_ver" | sort -V | head -1)" = "3.16" ] || die "cmake $cmake_ver is too old; 3.16 or newer is needed."

# --- venv and pinned wheels ----------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
PY="$VENV/bin/python"
lock_hash="$(sha256sum "$ROOT/requirements.lock" | cut -c1-16)"
if [ "$(cat "$STAMPS/wheels" 2>/dev/null)" != "$lock_hash" ]; then
  log "installing pinned wheels (torch 2.13.0 CPU first: an unpinned torch would pull a CUDA build)"
  "$PY" -m pip install -q --disable-pip-version-check "pip==25.3" "setuptools==84.2.1"
  "$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
  "$PY" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.lock"
  rm -f "$STAMPS/patched" "$STAMPS"/iface-*
  echo "$lock_hash" > "$STAMPS/wheels"
fi

# --- patch the wheels' CMake exports (they name the Python they were built with) -----------------
if [ ! -f "$STAMPS/patched" ]; then
  log "patching ROS wheels' CMake exports for this venv's Python"
  "$PY" - "$VENV" <<'PYEOF'
import glob, re, sys, sysconfig
import numpy
venv = sys.argv[1]
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
pat_np = re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/_core/include")
pat_py = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
changed = 0
for path in glob.glob(f"{venv}/share/*/cmake/*.cmake"):
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    new = pat_py.sub(py_inc, pat_np.sub(np_inc, text))
    if new != text:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(new)
        changed += 1
print(f"setup: patched {changed} CMake files")
PYEOF
  touch "$STAMPS/patched"
fi

# --- the package itself, used in place from the source tree (cascade-sd command) ----------------
# Before the interface build: pip treats the ament-installed egg of the same name as its own and
# would delete the generated msg/ code when (re)installing, so the interfaces are rebuilt after it.
if [ "$(cat "$STAMPS/editable" 2>/dev/null)" != "$ROOT" ]; then
  log "installing cascade_sd_ros from $ROOT in place"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    --config-settings editable_mode=compat -e "$ROOT"
  rm -f "$STAMPS/iface-cascade_sd_ros"
  echo "$ROOT" > "$STAMPS/editable"
fi

# --- interface packages --------------------------------------------------------------------------
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
build_iface() {  # $1 = name, $2 = source dir, $3.. = extra cmake args
  local name="$1" src="$2"; shift 2
  local h; h="$(cat "$src/CMakeLists.txt" "$src/package.xml" "$src"/msg/*.msg | sha256sum | cut -c1-16)"
  if [ "$(cat "$STAMPS/iface-$name" 2>/dev/null)" = "$h" ]; then return 0; fi
  log "building interfaces of $name"
  cmake -S "$src" -B "$BUILD/$name" -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF \
        -DPython3_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release "$@" > "$BUILD/$name.log" 2>&1 \
    || { tail -30 "$BUILD/$name.log" >&2; die "configuring $name failed (log: $BUILD/$name.log)"; }
  cmake --build "$BUILD/$name" -j "$(nproc)" >> "$BUILD/$name.log" 2>&1 \
    || { tail -30 "$BUILD/$name.log" >&2; die "building $name failed (log: $BUILD/$name.log)"; }
  cmake --install "$BUILD/$name" >> "$BUILD/$name.log" 2>&1 \
    || { tail -30 "$BUILD/$name.log" >&2; die "installing $name failed (log: $BUILD/$name.log)"; }
  echo "$h" > "$STAMPS/iface-$name"
}
mkdir -p "$BUILD"
# A ROS distribution's event_camera_msgs (sourced underlay) wins; the vendored copy is the fallback.
distro_ecm=""
IFS=: read -ra prefixes <<< "${AMENT_PREFIX_PATH}"
for p in "${prefixes[@]}"; do
  if [ "$p" != "$VENV" ] && [ -f "$p/share/event_camera_msgs/package.xml" ]; then distro_ecm="$p"; fi
done
if [ -n "$distro_ecm" ]; then
  log "using event_camera_msgs from $distro_ecm"
else
  build_iface event_camera_msgs "$ROOT/interfaces/event_camera_msgs"
fi
build_iface cascade_sd_ros "$ROOT" -DCASCADE_SD_ROS_INSTALL_PYTHON=OFF
# The generated package's empty __init__.py would shadow the source tree's package; without it the
# installed folder is a namespace portion that the source package's extend_path picks up.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$SITE/cascade_sd_ros/__init__.py"

"$PY" -c "import cascade_sd_ros.msg, event_camera_msgs.msg" \
  || die "the built interfaces do not import; remove $VENV and run again"
log "ready ($VENV)"
