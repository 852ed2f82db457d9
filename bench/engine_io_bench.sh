#!/usr/bin/env bash
# The engine's I/O policies and copy paths side by side on the GPU machine, with the thaw
# CLI (medians of --repeat N) and the pinned ceiling of the same run.
# Usage: bench/engine_io_bench.sh THAW_CLI BENCH_DIR WORKDIR SIZE_MIB [sections...]
#   sections: ceiling cold warm verify fresh (default: all)
# Cold runs drop the page cache (echo 3 > /proc/sys/vm/drop_caches: needs root).
set -u
thaw=$1 bench=$2 work=$3 size=$4; shift 4
sections=${*:-ceiling cold warm verify fresh}
snap=$work/model.thaw
mkdir -p "$work"
say() { echo "$(date -u +%H:%M:%S) $*"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { grep -E 'median' | tail -1; }
restore() { # label, then thaw restore arguments
  local label=$1; shift
  printf '%-44s ' "$label"
  timeout 120 "$thaw" restore "$snap" --device "${DEVICE:-cuda}" --quiet "$@" | grep -E 'median|restore:' | tail -1
}

# The model: a Hugging Face checkpoint already at $work/checkpoint (bench/gpu_bench.py's
# generator makes the Llama-3-8B-shaped one), else `thaw generate` of SIZE_MIB; converted once.
if [ ! -f "$snap" ] && [ -d "$work/checkpoint" ]; then
  t0=$(date +%s.%N)
  "$thaw" convert "$work/checkpoint" "$snap" --quiet > /dev/null
  say "converted $(stat -c %s "$snap") bytes in $(awk "BEGIN{print $(date +%s.%N) - $t0}") s"
fi
if [ ! -f "$snap" ]; then
  src=/dev/shm/thaw-bench-src
  t0=$(date +%s.%N)
  "$thaw" generate "$src" --size-mib "$size" --shards 4 --quiet > /dev/null
  "$thaw" convert "$src" "$snap" --quiet > /dev/null
  rm -rf "$src"
  say "generated and converted $(stat -c %s "$snap") bytes in $(awk "BEGIN{print $(date +%s.%N) - $t0}") s"
fi
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv,noheader
nproc; grep -E 'MemTotal|MemAvailable' /proc/meminfo; uname -r

for section in $sections; do
  case $section in
  ceiling)
    say "== pinned ceiling"
    timeout 60 "$bench/pinned_ceiling" 2048 7 16 ;;
  cold)
    say "== cold: page cache dropped before each first restore; the next ones show what it left"
    drop; printf '%-44s ' "disk O_DIRECT alone (16 x 16 MiB)"; timeout 120 "$bench/direct_read" "$snap" 16 16
    drop; restore "cold --io direct" --io direct
    drop; THAWCORE_READ_AHEAD=0 restore "cold --io buffered, no read-ahead" --io buffered
    drop; restore "cold --io auto (buffered + read-ahead)" --io auto
    restore "  then --io auto x3" --io auto --repeat 3 ;;
  warm)
    say "== warm staged (page cache), --repeat 5"
    "$thaw" restore "$snap" --device "${DEVICE:-cuda}" --quiet --io buffered > /dev/null
    restore "default (2 MiB chunks, 128 MiB, 16 thr)" --repeat 5
    restore "chunk 1 MiB (64 MiB)" --repeat 5 --chunk-mib 1 --staging-mib 64
    restore "chunk 4 MiB (256 MiB)" --repeat 5 --chunk-mib 4 --staging-mib 256
    restore "chunk 8 MiB (512 MiB; the old default)" --repeat 5 --chunk-mib 8 --staging-mib 512
    for t in 12 24; do restore "threads $t" --repeat 5 --threads $t --staging-mib $((t * 8)); done
    restore "8 slots a lane (256 MiB)" --repeat 5 --staging-mib 256
    THAWCORE_STAGING_HUGE=1 restore "staging on huge pages" --repeat 5
    restore "--io zerocopy" --io zerocopy --repeat 5
    restore "default again" --repeat 5 ;;
  verify)
    say "== checksums (CRC32C while restoring), --repeat 5"
    restore "default" --repeat 5
    restore "default --verify" --repeat 5 --verify
    restore "chunk 1 MiB --verify" --repeat 5 --verify --chunk-mib 1 --staging-mib 64
    restore "threads 24 --verify" --repeat 5 --verify --threads 24 --staging-mib 192
    restore "chunk 8 MiB --verify (the old default)" --repeat 5 --verify --chunk-mib 8 --staging-mib 512
    restore "--io zerocopy --verify" --io zerocopy --repeat 5 --verify ;;
  fresh)
    say "== fresh process: wall time of a whole thaw restore (engine start, allocation, restore x2)"
    for i in 1 2 3; do
      s=$(date +%s.%N); out=$("$thaw" restore "$snap" --device "${DEVICE:-cuda}" --quiet --repeat 2 | grep restore: | tr '\n' ' '); e=$(date +%s.%N)
      echo "fresh: wall $(awk "BEGIN{print $e - $s}") s; $out"
    done ;;
  esac
done
say "done"
