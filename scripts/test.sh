#!/usr/bin/env bash
# Runs every test: the core's C tests (plain and under ASan+UBSan), NUnit, pytest.
# Installs what is missing first (scripts/setup.sh test: cmake, gcc, Debian's torch, pytest, numpy...).
# Ends with one line "all: N passed, N failed, N skipped"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
logs=build/test-logs
mkdir -p "$logs"
passed=0 failed=0 skipped=0 broken=0

count() { # count PASSED FAILED SKIPPED
  passed=$((passed + ${1:-0})); failed=$((failed + ${2:-0})); skipped=$((skipped + ${3:-0}))
}

scripts/setup.sh test || { echo "setup failed"; echo "all: 0 passed, 1 failed"; exit 1; }
scripts/build.sh || { echo "build failed"; echo "all: 0 passed, 1 failed"; exit 1; }

run_ctest() { # build-dir label
  ctest --test-dir "$1" --output-on-failure 2>&1 | tee "$logs/$2.log"
  local total fail skip
  total=$(sed -nE 's/.*tests passed, [0-9]+ tests? failed out of ([0-9]+).*/\1/p' "$logs/$2.log" | tail -1)
  fail=$(sed -nE 's/.*tests passed, ([0-9]+) tests? failed out of.*/\1/p' "$logs/$2.log" | tail -1)
  skip=$(grep -c '\*\*\*Skipped' "$logs/$2.log")
  [ -n "$total" ] || { broken=1; return; }
  count $((total - fail - skip)) "$fail" "$skip"
}

echo "== core tests (C)"
run_ctest build/native core
echo "== core tests under AddressSanitizer + UBSan"
cmake -S . -B build/sanitize -DCMAKE_BUILD_TYPE=Debug -DTHAW_SANITIZE=ON > "$logs/sanitize-cmake.log" 2>&1 &&
  cmake --build build/sanitize -j"$(nproc)" > "$logs/sanitize-build.log" 2>&1 || { cat "$logs/sanitize-build.log"; broken=1; }
run_ctest build/sanitize core-sanitized

echo "== fuzz (libFuzzer over the core's plan, write and checksum entry points)"
tests/fuzz/run.sh 2>&1 | tee "$logs/fuzz.log"
line=$(grep -E '^fuzz: [0-9]+ passed' "$logs/fuzz.log" | tail -1)
[ -n "$line" ] || broken=1
count "$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<< "$line")" "$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<< "$line")" \
      "$(sed -nE 's/.* ([0-9]+) skipped.*/\1/p' <<< "$line")"

echo "== NUnit"
dotnet test tests/Thaw.Tests -c Release 2>&1 | tee "$logs/nunit.log"
line=$(grep -E 'Failed:[[:space:]]*[0-9]+, Passed:' "$logs/nunit.log" | tail -1)
if [ -n "$line" ]; then
  count "$(sed -nE 's/.*Passed:[[:space:]]*([0-9]+).*/\1/p' <<< "$line")" \
        "$(sed -nE 's/.*Failed:[[:space:]]*([0-9]+).*/\1/p' <<< "$line")" \
        "$(sed -nE 's/.*Skipped:[[:space:]]*([0-9]+).*/\1/p' <<< "$line")"
else
  broken=1
fi

echo "== pytest"
PYTHON=${THAW_TEST_PYTHON:-/usr/bin/python3}
# The library just built, not a copy a past wheel build left in python/thaw_vllm/lib.
export THAW_LIBRARY="$PWD/build/publish/pybridge/libthaw.so"
rm -f "$logs/pool-attacks.txt"
$PYTHON -m pytest -q -p no:cacheprovider tests/python 2>&1 | tee "$logs/pytest.log"
line=$(tail -1 "$logs/pytest.log")
p=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p; s/^([0-9]+) passed.*/\1/p' <<< "$line" | head -1)
f=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p; s/^([0-9]+) failed.*/\1/p' <<< "$line" | head -1)
s=$(sed -nE 's/.* ([0-9]+) skipped.*/\1/p; s/^([0-9]+) skipped.*/\1/p' <<< "$line" | head -1)
e=$(sed -nE 's/.* ([0-9]+) errors?.*/\1/p' <<< "$line" | head -1)
[ -n "$p$f" ] || broken=1
count "${p:-0}" "$(( ${f:-0} + ${e:-0} ))" "${s:-0}"
# The pool attack suite's counts per family (issue 11), written by tests/python/test_pool_attacks.py.
[ -f "$logs/pool-attacks.txt" ] && cat "$logs/pool-attacks.txt"

[ "$broken" = 0 ] || failed=$((failed + 1))
echo "all: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
