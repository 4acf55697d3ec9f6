# Compiled from tables_py.py; same Python API.
from edgedispatch._core.tables_py import KeyState as KeyState
from edgedispatch._core.tables_py import Tables as Tables
