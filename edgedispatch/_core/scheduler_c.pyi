# Compiled from scheduler_py.py; same Python API.
from edgedispatch._core.scheduler_py import Scheduler as Scheduler
