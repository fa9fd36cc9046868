"""Shim so that `pip install -e .` works with older pip/setuptools; configuration is in pyproject.toml."""
from setuptools import setup

setup()
