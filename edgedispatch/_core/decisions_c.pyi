# Compiled from decisions_py.py; same Python API.
from edgedispatch._core.decisions_py import Decisions as Decisions
