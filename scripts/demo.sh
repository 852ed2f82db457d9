#!/usr/bin/env bash
# The main job on a generated model: build, generate a Llama-shaped safetensors
# checkpoint (THAW_DEMO_MIB, default 1024), convert it, verify it, restore it
# (on the GPU when there is one, else the mock device) and print the throughput.
# Installs missing build tools first (scripts/setup.sh demo: cmake, make, gcc, libc6-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
scripts/build.sh
thaw=build/publish/cli/thaw
work=build/demo
size=${THAW_DEMO_MIB:-1024}
rm -rf "$work" && mkdir -p "$work"
$thaw generate "$work/checkpoint" --size-mib "$size" --shards 2
$thaw convert "$work/checkpoint" "$work/model.thaw"
$thaw info "$work/model.thaw"
$thaw verify "$work/model.thaw"
$thaw restore "$work/model.thaw" --repeat 5 --check
