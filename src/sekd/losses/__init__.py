"""Training and distillation losses, each a small function on waveform or spectrogram tensors."""
