"""Benchmark datasets: folder layouts -> `Case` lists (`load_dataset`), and `fetch` to download them.

Installed as `c123_pipeline.datasets` (never as a top-level `datasets`, which is Hugging Face's library).
"""

from c123_pipeline.datasets.case import Case
from c123_pipeline.datasets.registry import Dataset, default_data_root, filter_cases, load_dataset

__all__ = ["Case", "Dataset", "default_data_root", "filter_cases", "load_dataset"]
