"""hpc_profiler: Cell Painting images to profiles and the CPJUMP1 benchmark, at cluster scale."""
from ._version import __version__

__all__ = ["__version__"]
