# Metadata lives in setup.cfg; this shim lets older pip/setuptools do editable installs.
from setuptools import setup

setup()
