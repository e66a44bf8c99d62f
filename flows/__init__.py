"""The `benchmark` Prefect flow, its deployments, the serving entry and `c123 evaluate`."""
