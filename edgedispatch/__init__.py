"""edgedispatch: an on-prem edge server for realtime AI agents."""

from edgedispatch._version import __version__

__all__ = ["__version__"]
