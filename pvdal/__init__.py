"""pvdal: convert radiance fields between NeRF architectures (PVD-AL)."""

__version__ = "0.1.0"
