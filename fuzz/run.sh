#!/usr/bin/env bash
# Build the libFuzzer target for the shim's parser (ASan + UBSan) and run it.
#
#   fuzz/run.sh [SECONDS | -runs=N] [more libFuzzer flags...]
#     fuzz/run.sh 60              about a minute (make fuzz-short, part of make test)
#     fuzz/run.sh -runs=10000000  ten million executions (make fuzz)
#     fuzz/run.sh build           only build build/fuzz/fuzz_parse
#
# Seeds: tests/fuzz/corpus (real kernel replies) and tests/fuzz/regressions (past crash
# inputs); both are only read. New inputs go to build/fuzz/corpus, crash inputs to
# build/fuzz/artifacts/ (copy one into tests/fuzz/regressions/ once it is fixed).
# One fuzzing process (no -jobs/-workers): the machine has two cores.
# Exits non-zero when the fuzzer finds a crash, a leak or an invariant violation.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=build/fuzz
bin=$out/fuzz_parse
CC=${FUZZ_CC:-clang}

if ! command -v "$CC" >/dev/null; then
  echo "fuzz/run.sh: $CC not found; install it: apt-get install clang libclang-rt-14-dev" >&2
  exit 1
fi
mkdir -p "$out/corpus" "$out/artifacts"

# Rebuild when a source is newer than the binary.
if [ ! -x "$bin" ] || [ -n "$(find fuzz/fuzz_parse.c csrc/ipvs.c csrc/ipvs.h -newer "$bin" 2>/dev/null)" ]; then
  # shellcheck disable=SC2046
  if ! "$CC" -g -O1 -fno-omit-frame-pointer \
      -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
      -Wall -Wextra -Wno-unused-parameter -Icsrc $(pkg-config --cflags libnl-genl-3.0) \
      fuzz/fuzz_parse.c csrc/ipvs.c $(pkg-config --libs libnl-genl-3.0) -o "$bin.tmp"; then
    echo "fuzz/run.sh: build failed (libFuzzer's runtime is in libclang-rt-14-dev)" >&2
    exit 1
  fi
  mv "$bin.tmp" "$bin"
fi
[ "${1:-}" = build ] && exit 0

limit=(-max_total_time=60)
case "${1:-}" in
  "") ;;
  -*) limit=("$1"); shift ;;
  *[!0-9]*) echo "usage: $0 [SECONDS | -runs=N | build] [libFuzzer flags...]" >&2; exit 2 ;;
  *) limit=(-max_total_time="$1"); shift ;;
esac

# A 4 MiB quarantine still holds the blocks freed by the last ~40 inputs (a use after
# free within one input is caught); the default 256 MiB makes every input page-fault.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1:quarantine_size_mb=4}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
seeds=(tests/fuzz/corpus)
[ -d tests/fuzz/regressions ] && seeds+=(tests/fuzz/regressions)

log=$out/last-run.log
set +e
"$bin" "${limit[@]}" -max_len=8192 -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$out/artifacts/" "$@" "$out/corpus" "${seeds[@]}" 2>&1 | tee "$log" \
  | grep -E --line-buffered 'INITED|DONE|Done|ERROR|SUMMARY|invariant|runtime error|stat::number_of_executed_units|stat::peak_rss_mb|artifact|Test unit written'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  echo "fuzz/run.sh: the fuzzer failed (exit $rc); full log in $log, inputs in $out/artifacts/" >&2
  exit "$rc"
fi
echo "fuzz/run.sh: no crash, no leak, no sanitizer report; full log in $log"
