"""cffi builder (API mode) for the C shim: cdef is csrc/ipvs.h, source is csrc/ipvs.c.

libnl-genl-3 is found with pkg-config; when it (or pkg-config) is missing the build
stops with one line naming the packages to install.
"""

import os
import shlex
import shutil
import subprocess
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")
PKG = "libnl-genl-3.0"
MISSING = (
    "ingress_ipvs_exporter: cannot build the C shim: libnl-genl-3 development files "
    "not found via pkg-config ({why}). Install them: Debian/Ubuntu "
    "'apt-get install pkg-config libnl-genl-3-dev', "
    "Fedora/RHEL 'dnf install pkgconf-pkg-config libnl3-devel'."
)


def _pkg_config(*args: str) -> list[str]:
    if not shutil.which("pkg-config"):
        sys.exit(MISSING.format(why="pkg-config is not installed"))
    res = subprocess.run(["pkg-config", *args, PKG], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(MISSING.format(why=f"pkg-config has no {PKG}"))
    return shlex.split(res.stdout)


def _flags():
    cflags = _pkg_config("--cflags")
    libs = _pkg_config("--libs")
    include_dirs = [f[2:] for f in cflags if f.startswith("-I")]
    library_dirs = [f[2:] for f in libs if f.startswith("-L")]
    libraries = [f[2:] for f in libs if f.startswith("-l")]
    extra = shlex.split(os.environ.get("IPVS_SHIM_CFLAGS", ""))
    extra_link = shlex.split(os.environ.get("IPVS_SHIM_LDFLAGS", ""))
    return include_dirs, library_dirs, libraries, extra, extra_link


with open(os.path.join(CSRC, "ipvs.h")) as f:
    _header = f.read()

ffibuilder = FFI()
ffibuilder.cdef(_header)

_inc, _libdirs, _libs, _extra, _extra_link = _flags()
ffibuilder.set_source(
    "ingress_ipvs_exporter._ipvs_cffi",
    '#include <stdint.h>\n#include "ipvs.h"\n',
    sources=[os.path.relpath(os.path.join(CSRC, "ipvs.c"), HERE)],
    include_dirs=[CSRC, *_inc],
    library_dirs=_libdirs,
    libraries=_libs,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", *_extra],
    extra_link_args=_extra_link,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
