from setuptools import setup

# build_ext force: the shim is always compiled anew, never taken from a build/ an earlier
# build left (which would hide a compiler that no longer works, or ship stale code)
setup(cffi_modules=["build_ipvs.py:ffibuilder"], options={"build_ext": {"force": True}})
