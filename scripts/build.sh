#!/usr/bin/env bash
# Builds everything: the C core (CMake), the thaw executable and libthaw.so (NativeAOT).
# Outputs: build/native (libthawcore, C tests), build/publish/cli/thaw, build/publish/pybridge/libthaw.so
set -euo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

cmake -S . -B build/native -DCMAKE_BUILD_TYPE=Release > build.cmake.log 2>&1 || { cat build.cmake.log; exit 1; }
cmake --build build/native -j"$(nproc)" > /dev/null
rm -f build.cmake.log
# One publish at a time: both share Thaw.Interop's obj folder.
dotnet publish src/Thaw.Cli -c Release -r linux-x64 -o build/publish/cli -v quiet -p:DebugSymbols=false -p:StripSymbols=true
dotnet publish src/Thaw.PyBridge -c Release -r linux-x64 -o build/publish/pybridge -v quiet -p:DebugSymbols=false -p:StripSymbols=true
echo "built: build/publish/cli/thaw build/publish/pybridge/libthaw.so build/native/native/cuda/libthawcore.so"
