"""Compression of trained students: pruning, quantization, export and inference backends."""
