"""rsdml: semi-supervised deep metric learning for remote-sensing scene images (HR-S2DML)."""

__version__ = "0.1.0"
