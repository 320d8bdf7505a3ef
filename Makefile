# Every target creates the virtual environment on first use (and refreshes it
# when pyproject.toml changes), so a fresh clone needs nothing but Python 3.
# The packages go in with uv (installed into the venv by its own pip): the same
# versions pip resolves, in well under half the time. --compile-bytecode as pip
# does: where PYTHONDONTWRITEBYTECODE is set (CI images, containers) nothing
# would ever cache the bytecode, and every process would compile MLflow again
# (3.8 s instead of 1.5 s to import it here).
UV_INSTALL = bin/uv pip install --quiet --compile-bytecode
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Extra command-line arguments, e.g. `make train ARGS="trainer.epochs=5"`.
ARGS   ?=
HOST   ?= 127.0.0.1
PORT   ?= 5000

.PHONY: venv train test test-lowest lint ui docs sweep bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(VENV)/$(UV_INSTALL) --python $(PY) -e '.[test,sweeps,dashboard,docs]'
	touch $@

train: $(STAMP)
	$(PY) scripts/train.py $(ARGS)

# The linter first (seconds), then the suite in as many processes as the cores this process may use
# (affinity, cgroup quota, Slurm: mnist_np.common.cores), plus one: tests spend part of their time
# waiting on servers and subprocesses. Tests that share a costly fixture stay in one (tests/conftest.py).
TEST_WORKERS = $$($(PY) -c 'from mnist_np.common.cores import available_cores; print(available_cores().count + 1)')

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

# The linter alone, e.g. `make lint ARGS=--fix`.
lint: $(STAMP)
	$(VENV)/bin/ruff check $(ARGS) .

# The oldest supported libraries: the fast tests in a second venv resolved to the lowest
# versions pyproject.toml allows (uv's lowest-direct resolution), so its floors are tested ones.
LOWEST := .venv-lowest
$(LOWEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet uv
	$(LOWEST)/$(UV_INSTALL) --python $(LOWEST)/bin/python --resolution lowest-direct -e '.[test,sweeps]'
	touch $@

test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -m pytest -m "not slow" -p no:cacheprovider -n $$($(LOWEST)/bin/python -c 'from mnist_np.common.cores import available_cores; print(available_cores().count + 1)') --dist loadgroup $(ARGS)

# The UI reads the same store `make train` writes (mlflow.db at the project
# root); it binds to loopback unless HOST is given.
ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host $(HOST) --port $(PORT)

# The docs site (mkdocs.yml, docs/), rebuilt as you edit; loopback unless HOST is given.
docs: $(STAMP)
	$(VENV)/bin/mkdocs serve -a $(HOST):8000

# A small example sweep: 2 x 2 grid in parallel, 5 epochs each, one MLflow parent run.
sweep: $(STAMP)
	$(PY) scripts/train.py --multirun +sweep=parallel model.hidden_size=64,128 optimizer.lr=0.05,0.1 trainer.epochs=5 $(ARGS)

# Training-loop benchmark against the GEMM roofline and PyTorch (installs the pinned CPU torch),
# then whole default runs: the time spent outside the epochs, the peak memory, and what each
# shortcut of mnist_np/speedups.py saves (the same run with each one off in turn).
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) scripts/bench.py loop $(ARGS)
	$(PY) scripts/bench.py run --speedups

clean:
	rm -rf $(VENV) $(LOWEST) *.egg-info .pytest_cache site
