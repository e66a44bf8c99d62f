"""Fused Triton kernels of the hot paths (built on first use; see each module)."""
