"""sekd: knowledge distillation experiments for single-channel speech enhancement."""

__version__ = "0.1.0"
