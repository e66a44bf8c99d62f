"""Thin Prefect tasks and the Ray actor over c123 (the benchmark pipeline's workers)."""
