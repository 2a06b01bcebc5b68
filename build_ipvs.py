"""cffi builders (API mode) for the two C units: the netlink shim (cdef csrc/ipvs.h, source
csrc/ipvs.c, linked to libnl-genl-3) and the renderer's speedups (csrc/speedups.h and .c, no
library), each its own extension module.

Before cffi runs, the build checks what it needs - pkg-config, libnl-genl-3's development
files, a working C compiler, Python's headers - and when one is missing stops with one line
naming the packages to install (setuptools' own failure is a page of log). The compiler is
tried on every build, so that a build/ left by an earlier build cannot make a build with a
broken compiler look successful.
"""

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
PKG = "libnl-genl-3.0"
# {what} is missing ({why}): the packages that bring it on Debian/Ubuntu and Fedora/RHEL
MISSING = (
    "ingress_ipvs_exporter: cannot build the C shim: {what} not found ({why}). Install them: "
    "Debian/Ubuntu 'apt-get install {deb}', Fedora/RHEL 'dnf install {rpm}'."
)
NEEDS = {
    "libnl": (
        "libnl-genl-3 development files",
        "pkg-config libnl-genl-3-dev",
        "pkgconf-pkg-config libnl3-devel",
    ),
    "compiler": ("a working C compiler", "gcc", "gcc"),
    "python": ("Python's development headers (Python.h)", "python3-dev", "python3-devel"),
}


def missing(need: str, why: str) -> str:
    what, deb, rpm = NEEDS[need]
    return MISSING.format(what=what, why=why, deb=deb, rpm=rpm)


def _pkg_config(*args: str) -> list[str]:
    if not shutil.which("pkg-config"):
        sys.exit(missing("libnl", "pkg-config is not installed"))
    res = subprocess.run(["pkg-config", *args, PKG], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(missing("libnl", f"pkg-config has no {PKG}"))
    return shlex.split(res.stdout)


def _compiler() -> list[str]:
    """The compiler setuptools will run: $CC, else the one Python was built with."""
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def _check_compiler(cflags: list[str]) -> None:
    """Compile two one-line files: a bare one (the compiler works), one that includes Python.h."""
    cc = _compiler()
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory() as tmp:
        for need, text, flags in (
            ("compiler", "int main(void) { return 0; }\n", []),
            ("python", "#include <Python.h>\n", [f"-I{include}", *cflags]),
        ):
            src = os.path.join(tmp, f"{need}.c")
            with open(src, "w") as f:
                f.write(text)
            try:
                res = subprocess.run(
                    [*cc, *flags, "-c", src, "-o", os.path.join(tmp, f"{need}.o")],
                    capture_output=True,
                    text=True,
                )
            except OSError as e:
                sys.exit(missing("compiler", f"cannot run {cc[0]}: {e.strerror}"))
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
                why = f"{cc[0]} failed: {last.strip()}" if need == "compiler" else f"{include}/Python.h"
                sys.exit(missing(need, why))


def _flags():
    cflags = _pkg_config("--cflags")
    libs = _pkg_config("--libs")
    include_dirs = [f[2:] for f in cflags if f.startswith("-I")]
    library_dirs = [f[2:] for f in libs if f.startswith("-L")]
    libraries = [f[2:] for f in libs if f.startswith("-l")]
    extra = shlex.split(os.environ.get("IPVS_SHIM_CFLAGS", ""))
    extra_link = shlex.split(os.environ.get("IPVS_SHIM_LDFLAGS", ""))
    return include_dirs, library_dirs, libraries, extra, extra_link


def _cdef(name: str) -> str:
    with open(os.path.join(CSRC, name)) as f:
        return f.read()


def _source(name: str) -> list[str]:
    """A C file of csrc/, relative to here: setuptools wants relative source paths."""
    return [os.path.relpath(os.path.join(CSRC, name), HERE)]


CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

ffibuilder = FFI()
ffibuilder.cdef(_cdef("ipvs.h"))

_inc, _libdirs, _libs, _extra, _extra_link = _flags()
_check_compiler([f"-I{d}" for d in _inc])
ffibuilder.set_source(
    "ingress_ipvs_exporter._ipvs_cffi",
    '#include <stdint.h>\n#include "ipvs.h"\n',
    sources=_source("ipvs.c"),
    include_dirs=[CSRC, *_inc],
    library_dirs=_libdirs,
    libraries=_libs,
    extra_compile_args=[*CFLAGS, "-pthread", *_extra],
    # a dump's second thread (glibc before 2.34 keeps pthread_create in libpthread)
    extra_link_args=["-pthread", *_extra_link],
)

speedups_builder = FFI()
speedups_builder.cdef(_cdef("speedups.h"))
speedups_builder.set_source(
    "ingress_ipvs_exporter._speedups_cffi",
    '#include <stddef.h>\n#include <stdint.h>\n#include "speedups.h"\n',
    sources=_source("speedups.c"),
    include_dirs=[CSRC],
    extra_compile_args=[*CFLAGS, *_extra],
    extra_link_args=_extra_link,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    speedups_builder.compile(verbose=True)
