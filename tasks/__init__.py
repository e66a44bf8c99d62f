"""Thin Prefect tasks and Ray actors over the c123 method."""
