from setuptools import setup

# build_ext force: the C units are always compiled anew, never taken from a build/ an earlier
# build left (which would hide a compiler that no longer works, or ship stale code)
setup(
    cffi_modules=["build_ipvs.py:ffibuilder", "build_ipvs.py:speedups_builder"],
    options={"build_ext": {"force": True}},
)
