#!/usr/bin/env bash
# Builds dist/thaw_vllm-<version>-py3-none-linux_x86_64.whl: the Python package with
# libthaw.so and the thaw executable inside. Installs with `pip install dist/*.whl`
# where neither .NET nor a CUDA toolkit is present.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
mkdir -p python/thaw_vllm/lib python/thaw_vllm/bin
# Replace by rename, never in place: a running process (a test run) may have the old one mapped.
cp build/publish/pybridge/libthaw.so python/thaw_vllm/lib/libthaw.so.new && mv -f python/thaw_vllm/lib/libthaw.so.new python/thaw_vllm/lib/libthaw.so
cp build/publish/cli/thaw python/thaw_vllm/bin/thaw.new && mv -f python/thaw_vllm/bin/thaw.new python/thaw_vllm/bin/thaw
rm -rf build/wheel-build dist
PYTHON=${THAW_WHEEL_PYTHON:-/usr/bin/python3}
$PYTHON -m pip wheel --no-deps --no-build-isolation --no-index -w dist . > build/wheel.log 2>&1 || { cat build/wheel.log; exit 1; }
# The copies were staging for the wheel only: left in the source tree, they would shadow
# build/publish for PYTHONPATH=python users and tests (python/thaw_vllm/_native.py looks in lib/ first).
rm -rf build/lib build/bdist.* python/thaw_vllm.egg-info python/thaw_vllm/lib python/thaw_vllm/bin
ls dist/*.whl
