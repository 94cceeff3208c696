# deepserve: `make serve` installs and serves the default model repository; `make test` runs every test.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install serve test test-gpu lint bench fuzz soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,export,test]'
	touch $(STAMP)

serve: install
	$(VENV)/bin/deepserve serve

test: install
	$(PY) -m pytest -q

test-gpu: install
	$(PY) -m pytest -q tests/gpu

# Long fuzzing run (issue #13): every example count of tests/fuzz times FUZZ_SCALE (12: 10,000+
# cases); the run writes tests/fuzz/results/fuzz-<date>.json, then docs/fuzzing.md from it.
FUZZ_SCALE ?= 12
fuzz: install
	DEEPSERVE_FUZZ_SCALE=$(FUZZ_SCALE) DEEPSERVE_FUZZ_RESULTS=1 $(PY) -m pytest -q --timeout=3600 tests/fuzz
	$(PY) -m tests.fuzz.report

# Soak (issue #13): 30 minutes of mixed traffic at 70 % of the probed saturation; writes
# loadtests/results/soak-<date>.json and docs/benchmarks-soak.md.
soak: install
	$(PY) -m loadtests.soak --json loadtests/results/soak-$(shell date -u +%F).json --out docs/benchmarks-soak.md

lint: install
	$(PY) -m pip install --quiet ruff
	$(VENV)/bin/ruff check server models export loadtests tests
	$(VENV)/bin/hadolint docker/Dockerfile docker/Dockerfile.cpu
	promtool check config docker/prometheus/prometheus.yml
	promtool check rules docker/prometheus/alerts.yml

bench: install
	$(PY) -m loadtests.ensemble_overhead --out docs/benchmarks-ensemble.md --json loadtests/results/ensemble-$(shell date -u +%F).json
	$(PY) -m loadtests.detect_bench --out docs/benchmarks-detect.md --json loadtests/results/detect-$(shell date -u +%F).json
	$(PY) -m loadtests.images_bench --out docs/benchmarks-images.md --json loadtests/results/images-$(shell date -u +%F).json
	$(PY) -m loadtests.bench --out docs/benchmarks.md
	$(PY) -m loadtests.grpc_vs_http --out docs/benchmarks-grpc.md
	$(PY) -m loadtests.readme_summary --bench-json loadtests/results/bench-latest.json

clean:
	rm -rf $(VENV) model_repository
