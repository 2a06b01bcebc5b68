#!/usr/bin/env bash
# The kernel test suite with the C shim built under AddressSanitizer + UBSan.
#
#   fuzz/test-asan.sh            build, check on this host, then run tests/kernel in the VM
#   fuzz/test-asan.sh build      only build (and check on this host)
#
# 1. Builds the cffi module with IPVS_SHIM_CFLAGS/IPVS_SHIM_LDFLAGS (read by
#    build_ipvs.py) = -fsanitize=address,undefined -fno-sanitize-recover=all into
#    build/asan/, and lays out build/asan/pkg/ingress_ipvs_exporter: this tree's .py
#    files plus the sanitized module. PYTHONPATH=build/asan/pkg puts it ahead of the
#    venv's editable install (whose own module is left alone).
# 2. On this host: the parser on the fuzz corpus and the unit tests, with gcc's libasan
#    preloaded (Python itself is not instrumented, so the runtime has to come first).
# 3. In the VM: the kernel suite, with the same environment; every Python process the
#    tests start (the exporter included) runs with the ASan runtime, other programs
#    without it (build/asan/pkg/sitecustomize.py). Python leaks at exit by
#    design, so detect_leaks=0 (leaks are tests/kernel/test_leaks_kernel.py's job, under
#    valgrind, which cannot run beside ASan: its valgrind test is deselected here).
#    Reports go to build/vm/asan/; any sanitizer error report fails the run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
py=.venv/bin/python
out=build/asan
[ -x "$py" ] || { echo "fuzz/test-asan.sh: no venv; run 'make venv' first" >&2; exit 1; }
libasan=$(gcc -print-file-name=libasan.so)
[ -e "$libasan" ] || { echo "fuzz/test-asan.sh: gcc's libasan not found (apt-get install libasan8)" >&2; exit 1; }

rm -rf "$out/tmp" "$out/pkg"
mkdir -p "$out/tmp" "$out/pkg/ingress_ipvs_exporter"
# cffi compiles inside its tmpdir and build_ipvs.py names csrc/*.c relative to the repo
ln -s "$repo/csrc" "$out/tmp/csrc"
IPVS_SHIM_CFLAGS="-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
IPVS_SHIM_LDFLAGS="-fsanitize=address,undefined" \
  "$py" -c "import sys; sys.path.insert(0, '.'); import build_ipvs as b; [print(f.compile(tmpdir='$out/tmp')) for f in (b.ffibuilder, b.speedups_builder)]" \
  > "$out/build.log" 2>&1 || { cat "$out/build.log" >&2; exit 1; }
(cd src && find ingress_ipvs_exporter -name "*.py" -exec cp --parents {} "$repo/$out/pkg/" \;)  # subpackages too
for so in "$out"/tmp/ingress_ipvs_exporter/_ipvs_cffi*.so "$out"/tmp/ingress_ipvs_exporter/_speedups_cffi*.so; do
  cp "$so" "$out/pkg/ingress_ipvs_exporter/"
  ldd "$so" | grep -q libasan || { echo "fuzz/test-asan.sh: $so is not linked with libasan" >&2; exit 1; }
done
# Only Python processes (which load the shim) carry the ASan runtime: other programs the
# tests start (curl, ip, iptables, ...) are not under test, and curl hung under it.
# Python run without it (the exporter, started by the tests) re-executes itself with it.
cat > "$out/pkg/sitecustomize.py" <<'PY'
import os
import sys

_pre = os.environ.get("IPVS_ASAN_PRELOAD")
if _pre:
    if os.environ.get("LD_PRELOAD") != _pre:
        with open("/proc/self/cmdline", "rb") as _f:
            _argv = _f.read().split(b"\0")[:-1]
        _argv[0] = os.fsencode(sys.executable)
        _env = dict(os.environb)
        _env[b"LD_PRELOAD"] = os.fsencode(_pre)
        os.execve(sys.executable, _argv, _env)
    del os.environ["LD_PRELOAD"]
PY

export LD_PRELOAD=$libasan IPVS_ASAN_PRELOAD=$libasan
export PYTHONPATH=$repo/$out/pkg
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONMALLOC=malloc   # exact-size heap blocks for cffi buffers, so ASan sees their ends
where=$("$py" -c 'import ingress_ipvs_exporter._ipvs_cffi as m; print(m.__file__)')
case "$where" in
  "$repo/$out/pkg/"*) echo "fuzz/test-asan.sh: sanitized shim: $where" ;;
  *) echo "fuzz/test-asan.sh: python imports $where, not the sanitized shim" >&2; exit 1 ;;
esac
# (also kept in a file: a stdout redirected around the VM run came back truncated)
"$py" -m pytest -p no:cacheprovider -q tests/fuzz tests/unit tests/integration 2>&1 | tee "$out/host-tests.log"
[ "${1:-}" = build ] && exit 0

mkdir -p build/vm/asan
rm -f build/vm/asan/report.* build/vm/asan/pytest.log
# Reports go to a world-writable directory inside the VM (some tests run the exporter as
# nobody) and are copied to build/vm/asan/ (the VM's writable part of the repo) at the end.
export ASAN_OPTIONS=$ASAN_OPTIONS:log_path=/tmp/ipvs-asan/report
export UBSAN_OPTIONS=$UBSAN_OPTIONS:log_path=/tmp/ipvs-asan/report
# one line: the command crosses virtme-ng's --exec, which does not keep newlines
inner='mkdir -p /tmp/ipvs-asan && chmod 1777 /tmp/ipvs-asan; python -m pytest -p no:cacheprovider -q -rfEx -m kernel tests/kernel -k "not valgrind" 2>&1 | tee build/vm/asan/pytest.log; rc=${PIPESTATUS[0]}; cp /tmp/ipvs-asan/report.* build/vm/asan/ 2>/dev/null; exit $rc'
set +e
tests/vm/vm-run --timeout "${VM_TIMEOUT:-5400}" -- env LD_PRELOAD="$LD_PRELOAD" IPVS_ASAN_PRELOAD="$LD_PRELOAD" PYTHONPATH="$PYTHONPATH" \
  PYTHONMALLOC=malloc ASAN_OPTIONS="$ASAN_OPTIONS" UBSAN_OPTIONS="$UBSAN_OPTIONS" bash -c "$inner"
rc=$?
set -e
reports=$(ls build/vm/asan/report.* 2>/dev/null || true)
if [ -n "$reports" ]; then
  echo "fuzz/test-asan.sh: sanitizer reports:" >&2
  for r in $reports; do echo "== $r" >&2; head -40 "$r" >&2; done
  # warnings (ASan's note on swapcontext, ...) are shown only; an error report fails
  if grep -lE 'ERROR: (Address|Leak)Sanitizer|runtime error:' $reports >&2; then
    echo "fuzz/test-asan.sh: sanitizer errors in the reports above" >&2
    exit 1
  fi
fi
[ "$rc" -eq 0 ] || { echo "fuzz/test-asan.sh: kernel suite failed under ASan (exit $rc); log: build/vm/asan/pytest.log" >&2; exit "$rc"; }
echo "fuzz/test-asan.sh: kernel suite passed with the shim under ASan+UBSan; no sanitizer error"
