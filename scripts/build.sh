#!/usr/bin/env bash
# Builds everything: the C core (CMake), the thaw executable and libthaw.so (NativeAOT).
# The same works without this script: dotnet build Thaw.sln, dotnet test, dotnet publish src/Thaw.Cli.
# Outputs: build/native (libthawcore, C tests), build/publish/cli/thaw, build/publish/pybridge/libthaw.so
set -euo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

# The C core is built by the Thaw.Interop build itself (native/ThawCore.targets runs scripts/build_core.sh).
# One publish at a time: both share Thaw.Interop's obj folder.
dotnet publish src/Thaw.Cli -c Release -r linux-x64 -o build/publish/cli -v quiet -p:DebugSymbols=false -p:StripSymbols=true
dotnet publish src/Thaw.PyBridge -c Release -r linux-x64 -o build/publish/pybridge -v quiet -p:DebugSymbols=false -p:StripSymbols=true
echo "built: build/publish/cli/thaw build/publish/pybridge/libthaw.so build/native/native/cuda/libthawcore.so"
