# The compiled ring has exactly the Python API of its pure twin.
from edgedispatch._core.ring_py import Record as Record
from edgedispatch._core.ring_py import Ring as Ring
