"""qalas-bids: quantitative T1, T2, PD and inversion-efficiency maps from 3D-QALAS (BIDS App)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
