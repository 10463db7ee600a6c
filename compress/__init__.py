"""Compression and shipping of trained models: pruning, quantization, export, backends."""
