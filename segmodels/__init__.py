"""segmodels: backbones × context modules for semantic segmentation, and the study that compares them."""

__version__ = "0.1.0"
__all__ = ["__version__"]
