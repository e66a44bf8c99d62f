"""Benchmark datasets: folder layouts -> `Case` lists (`load_dataset`), and `fetch` to download them.

This top-level package shadows Hugging Face's `datasets` library; the project does not use that library.
"""

from c123_pipeline.datasets.case import Case
from c123_pipeline.datasets.registry import Dataset, default_data_root, filter_cases, load_dataset

__all__ = ["Case", "Dataset", "default_data_root", "filter_cases", "load_dataset"]
