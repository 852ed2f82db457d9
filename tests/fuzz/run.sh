#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan+UBSan) in build/fuzz and runs each for
# THAW_FUZZ_SECONDS (default 30) from the seeds in tests/fuzz/corpus/<target>; what a run
# adds to its corpus stays in build/fuzz/corpus. A crash, leak, timeout or out-of-memory
# fails the target and leaves the input in build/fuzz/artifacts.
# Ends with one line "fuzz: N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/../.."
seconds=${THAW_FUZZ_SECONDS:-30}
targets="restore_plan write_segments crc32c"
clang=${THAW_FUZZ_CC:-clang-14}
count=$(wc -w <<< "$targets")
if ! command -v "$clang" > /dev/null || ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' |
     "$clang" -x c -fsanitize=fuzzer -o /dev/null - 2> /dev/null; then
  echo "fuzz: $clang with libFuzzer is missing (Debian: apt-get install clang-14 libclang-rt-14-dev)"
  echo "fuzz: 0 passed, 0 failed, $count skipped"
  exit 0
fi
if ! { cmake -S . -B build/fuzz -DCMAKE_C_COMPILER="$clang" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTHAW_FUZZ=ON > build/fuzz.log 2>&1 &&
       cmake --build build/fuzz -j"$(nproc)" --target $(sed 's/[^ ]*/fuzz_&/g' <<< "$targets") >> build/fuzz.log 2>&1; }; then
  tail -30 build/fuzz.log
  echo "fuzz: 0 passed, $count failed, 0 skipped"
  exit 1
fi
passed=0 failed=0
mkdir -p build/fuzz/artifacts
for t in $targets; do
  mkdir -p "build/fuzz/corpus/$t"
  log="build/fuzz/$t.log"
  build/fuzz/tests/fuzz/fuzz_$t "build/fuzz/corpus/$t" "tests/fuzz/corpus/$t" -max_total_time="$seconds" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="build/fuzz/artifacts/$t-" > "$log" 2>&1
  rc=$?
  runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    echo "fuzz_$t: ${runs:-?} inputs in ${seconds} s, ${cov:-cov: ?}, no crash, leak, hang or out-of-memory"
  else
    failed=$((failed + 1))
    grep -E 'ERROR|SUMMARY|Test unit written|undocumented|disagrees|not its' "$log" | head -10
    echo "fuzz_$t: FAILED (exit $rc); the log is $log, the input in build/fuzz/artifacts"
  fi
done
echo "fuzz: $passed passed, $failed failed, 0 skipped"
[ "$failed" = 0 ]
