"""The benchmark pipeline around the method: datasets (folder layouts), tasks (Ray actors, metrics, Parquet),
flows (the Prefect flow, deployments, `c123 evaluate`) and reports (tables, plots, HTML, verdicts).

The repository keeps these as the top-level folders `datasets/`, `tasks/`, `flows/` and `reports/`; they are
installed as `c123_pipeline.datasets` etc. (setuptools package-dir), so they never shadow Hugging Face's
`datasets` or any other top-level package. Import them by that name only.
"""

from pathlib import Path

# In a source checkout the four folders sit beside this one, not inside it: let the package find them
# there too, so a checkout on PYTHONPATH imports its own pipeline code (and not an installed copy).
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "flows" / "benchmark.py").is_file():
    __path__.append(str(_CHECKOUT))
