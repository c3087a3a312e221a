# One-command entry points. `make demo` and `make test` create the venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.onnlab-installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## the main job: simulated fabrication -> calibrate -> capture -> NTKD fine-tune
	$(VENV)/bin/onnlab finetune --sim

test: $(STAMP)  ## the whole test suite (its duration on 2 CPU cores is in the README)
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	for b in optics ntk calibration estimate design; do $(VENV)/bin/onnlab bench $$b --json; done

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
