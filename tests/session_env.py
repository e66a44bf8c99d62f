"""The test session's own homes and caches, set when the first test module loads (tests/conftest.py imports
this before anything else, so before anything imports Prefect, Ray or Hugging Face).

HOME, XDG caches, Hugging Face, torch, matplotlib, the c123 caches (preprocessed inputs, synthetic renders,
tiny models), Prefect and Ray all point into one temporary folder per session: a test never reads what an
earlier session, the user or another test file left behind, and a file passes alone as in the suite.
The datasets are the exception: their root is resolved first (with the user's HOME) and pinned in C123_DATA.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from c123_pipeline.datasets.registry import DATA_ENV, default_data_root

SESSION = Path(tempfile.mkdtemp(prefix="c123-tests-"))
TESTS = Path(__file__).resolve().parent

os.environ[DATA_ENV] = str(default_data_root())  # before HOME moves: ~/.cache/c123/data is the user's
for name in ("PREFECT_API_URL", "RAY_ADDRESS", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE"):
    os.environ.pop(name, None)  # a user's server, cluster or cache must not serve (or receive) test runs
# the Ray workers (and served flow runs) import the work functions of pipeline_faults from tests/
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
os.environ.update(
    HOME=str(SESSION / "home"),
    XDG_CACHE_HOME=str(SESSION / "home" / ".cache"),
    XDG_CONFIG_HOME=str(SESSION / "home" / ".config"),
    HF_HOME=str(SESSION / "huggingface"),
    TORCH_HOME=str(SESSION / "torch"),
    MPLCONFIGDIR=str(SESSION / "matplotlib"),
    PREFECT_HOME=str(SESSION / "prefect"),
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_LOGGING_LEVEL=os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
    C123_TINY_MODELS=str(SESSION / "tiny-models"),
    C123_CACHE=str(SESSION / "cache"),  # preprocessed photos, learned concepts, synthetic renders
    C123_RAY_HOME=str(SESSION / "ray-home"),
    C123_RAY_LOG_TO_DRIVER="0",
    HF_HUB_OFFLINE="1",
)
(SESSION / "home").mkdir()
atexit.register(shutil.rmtree, SESSION, True)
