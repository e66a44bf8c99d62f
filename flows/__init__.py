"""Prefect flows and deployments of the benchmark."""
