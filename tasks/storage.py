"""The pipeline's name for c123.storage (run folders at fsspec URLs): one module, two names.

It lives in c123/ since `c123 reconstruct --out s3://...` writes through it too and c123/ imports nothing from
the pipeline; `from c123_pipeline.tasks import storage` keeps working and gives the very same module object
(so a test that patches one patches both)."""

import sys

from c123 import storage

sys.modules[__name__] = storage
