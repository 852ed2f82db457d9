#!/usr/bin/env bash
# Installs what the README's commands need and this machine lacks, from Debian's archive:
#   scripts/setup.sh demo   build tools: cmake, make, gcc, libc6-dev
#   scripts/setup.sh test   the same, and for the Python tests python3-torch (CPU), python3-pytest,
#                           python3-numpy, python3-pip, python3-venv, python3-setuptools, python3-wheel,
#                           and for the fuzzers (tests/fuzz) clang-14 and libclang-rt-14-dev (libFuzzer)
# Each requirement is checked first; nothing is installed (and apt is not touched) when all are
# present. THAW_NO_INSTALL=1 only reports what is missing. The .NET 10 SDK is not a Debian package:
# a missing `dotnet` is reported, not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
purpose=${1:?usage: scripts/setup.sh demo|test}
PYTHON=${THAW_TEST_PYTHON:-/usr/bin/python3}

missing=()
need() { # need PACKAGE CHECK-COMMAND...
  local package=$1
  shift
  "$@" > /dev/null 2>&1 || missing+=("$package")
}
python_has() { "$PYTHON" -c "import $1"; }

need cmake command -v cmake
need make command -v make
need gcc command -v gcc
need libc6-dev test -e /usr/include/stdio.h
if [ "$purpose" = test ]; then
  need python3 test -x "$PYTHON"
  need python3-torch python_has torch
  need python3-pytest python_has pytest
  need python3-numpy python_has numpy
  need python3-setuptools python_has setuptools
  need python3-wheel python_has wheel
  need python3-venv python_has ensurepip
  need python3-pip "$PYTHON" -m pip --version
  need clang-14 command -v clang-14
  need libclang-rt-14-dev compgen -G "/usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a"
elif [ "$purpose" != demo ]; then
  echo "usage: scripts/setup.sh demo|test" >&2
  exit 2
fi

if ! command -v dotnet > /dev/null; then
  echo "setup: the .NET 10 SDK is missing (dotnet is not on PATH); install it from Microsoft's packages" >&2
  exit 1
fi
[ ${#missing[@]} -gt 0 ] || exit 0

echo "setup: installing ${missing[*]}" >&2
if [ "${THAW_NO_INSTALL:-0}" = 1 ]; then
  echo "setup: THAW_NO_INSTALL=1, not installing; install them and run again" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo > /dev/null || { echo "setup: not root and no sudo: install ${missing[*]} and run again" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
