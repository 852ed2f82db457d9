#!/usr/bin/env bash
# Sweeps engine sizing on the GPU machine with the thaw CLI: warm (page cache) and
# cold (O_DIRECT, caches dropped) restores of one snapshot. Usage: bench/tune_gpu.sh SNAPSHOT
set -u
snap=$1
thaw=build/publish/cli/thaw
echo "== warm sweep (median of 5)"
for threads in 4 8 12 16; do
  for chunk in 8 16 32 64; do
    staging=$(( threads * chunk * 4 )); [ $staging -lt 512 ] && staging=512
    printf "threads=%-3s chunk=%-3sMiB staging=%-5sMiB " $threads $chunk $staging
    $thaw restore "$snap" --device cuda --io buffered --repeat 5 --quiet --threads $threads --chunk-mib $chunk --staging-mib $staging | grep median
  done
done
echo "== cold sweep (caches dropped before each)"
for threads in 4 8 16; do
  for chunk in 16 64; do
    sync; echo 3 > /proc/sys/vm/drop_caches
    printf "threads=%-3s chunk=%-3sMiB " $threads $chunk
    $thaw restore "$snap" --device cuda --io direct --quiet --threads $threads --chunk-mib $chunk --staging-mib 1024 | grep restore:
  done
done
