"""Distillation methods, chosen by name in ``params.yaml`` (``distill.<method>``)."""
