"""Custom CPU kernels, compiled on first use (see int8.py)."""
