#!/usr/bin/env bash
# Installs the project's pinned dependencies and stages them under deps/ (git-ignored), so that the
# same folder can be carried to an offline GPU machine and the build finds everything in one place:
#   deps/cutlass/    CUTLASS/CuTe headers from the PyPI wheel nvidia-cutlass (pinned, --no-deps)
#   deps/include/    CLI11 and nlohmann-json headers (Debian packages, header-only)
#   deps/googletest/ GoogleTest sources (Debian package googletest), built by CMake when no
#                    installed GTest package is found (the GPU machine has none)
#   deps/python/     nanobind (PyPI, pinned) for the Python extension
#   deps/pytest/     numpy and pytest (PyPI, pinned) for its tests (not carried to the GPU machine)
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

CUTLASS_VERSION=4.2.0.0
NANOBIND_VERSION=2.9.2
NUMPY_VERSION=2.4.6
PYTEST_VERSION=9.2.0
DEPS=deps

need_apt=()
[ -f /usr/include/CLI/CLI.hpp ] || need_apt+=(libcli11-dev)
[ -f /usr/include/nlohmann/json.hpp ] || need_apt+=(nlohmann-json3-dev)
[ -d /usr/src/googletest/googletest ] || need_apt+=(googletest libgtest-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -f "$DEPS/cutlass/.version-$CUTLASS_VERSION" ]; then
  rm -rf "$DEPS/cutlass"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$DEPS/cutlass" \
    "nvidia-cutlass==$CUTLASS_VERSION"
  touch "$DEPS/cutlass/.version-$CUTLASS_VERSION"
fi

if [ ! -f "$DEPS/python/.version-$NANOBIND_VERSION" ]; then
  rm -rf "$DEPS/python"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$DEPS/python" \
    "nanobind==$NANOBIND_VERSION"
  touch "$DEPS/python/.version-$NANOBIND_VERSION"
fi
if [ ! -f "$DEPS/pytest/.version-$NUMPY_VERSION-$PYTEST_VERSION" ]; then
  rm -rf "$DEPS/pytest"
  python3 -m pip install -q --disable-pip-version-check --target "$DEPS/pytest" \
    "numpy==$NUMPY_VERSION" "pytest==$PYTEST_VERSION"
  touch "$DEPS/pytest/.version-$NUMPY_VERSION-$PYTEST_VERSION"
fi

mkdir -p "$DEPS/include"
[ -d "$DEPS/include/CLI" ] || cp -r /usr/include/CLI "$DEPS/include/"
[ -d "$DEPS/include/nlohmann" ] || cp -r /usr/include/nlohmann "$DEPS/include/"
[ -d "$DEPS/googletest" ] || cp -r /usr/src/googletest "$DEPS/googletest"
echo "deps ready under $DEPS/"
