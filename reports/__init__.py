"""Parquet results of benchmark runs -> tables (md, tex), plots (png), an HTML page and a regression verdict."""
