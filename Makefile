# The two commands a newcomer needs: `make demo` (the main job) and `make test` (the test suite).
# Both install what they need into .venv first (torch from the local mirror pin: see pyproject.toml).
# Tests run through .venv/bin/pytest, not `python -m pytest`: the latter puts the repository root on sys.path,
# where its datasets/ folder would shadow Hugging Face datasets.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

.PHONY: demo test test-slow bench install chromium

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the HTML report's browser test (root on CI and dev machines).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# The main job: the benchmark flow (local Prefect API, local Ray) on the synthetic dataset with the oracle as
# the 3D prior (preset verify: numbers with a right answer), then what was reconstructed and what the numbers mean.
demo: $(STAMP)
	.venv/bin/c123 evaluate synthetic --preset verify --protocol syncdreamer --out runs/demo
	$(PY) -m c123_pipeline.reports.verify runs/demo

test: $(STAMP) chromium
	.venv/bin/pytest -q

test-slow: $(STAMP) chromium
	.venv/bin/pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_nerf.py --quick
	$(PY) benchmarks/bench_raster.py --quick
	$(PY) benchmarks/bench_priors.py
	$(PY) benchmarks/bench_orchestration.py
