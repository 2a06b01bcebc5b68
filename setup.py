from setuptools import setup

setup(cffi_modules=["build_ipvs.py:ffibuilder"])
