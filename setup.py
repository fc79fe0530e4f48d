# The cffi builder can only be wired in through setup(); all other metadata lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["echo_core/_build.py:ffibuilder"])
