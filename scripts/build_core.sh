#!/usr/bin/env bash
# Configures (once) and builds the C core and its C tests into build/native, incrementally.
# The Thaw.Interop build runs it (native/ThawCore.targets), so dotnet build, test, publish and pack
# build the core themselves; one at a time (flock), so that parallel project builds never run
# CMake on the same tree together.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cmake > /dev/null || { echo "cmake is not installed: run scripts/setup.sh demo (installs cmake, make, gcc)" >&2; exit 1; }
mkdir -p build/native
exec 9> build/native/.lock
flock 9
if [ ! -f build/native/CMakeCache.txt ]; then
  cmake -S . -B build/native -DCMAKE_BUILD_TYPE=Release > build/native/configure.log 2>&1 || { cat build/native/configure.log >&2; exit 1; }
fi
cmake --build build/native -j"$(nproc)"
