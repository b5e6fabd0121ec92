# Two commands do all set-up on a fresh machine (Python 3.11+ and the package registry):
#   make run    install, then run the main job (the Prefect flow) on the embedded default (bundled digits)
#   make test   install, then run the test suite
# uv is installed with pip when missing; dependencies come from the committed uv.lock.

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)

# Nothing phones home: DVC, Prefect and MLflow telemetry off for every command below.
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
# Never fetch a Python interpreter: use the machine's.
export UV_PYTHON_DOWNLOADS := never
# `install` compiles every installed module to bytecode once: where PYTHONDONTWRITEBYTECODE is set
# (as on this project's machines) each process would otherwise compile torch, Lightning and MLflow
# from source on import, about 10 s of CPU per stage process.

.PHONY: install postgres run test lint format docs plots clean

install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv \
		|| python3 -m pip install --quiet --user uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen --compile-bytecode
	@test -f .dvc/plots/offline.html || $(UV) run python -m components.offline_plots

# tests/test_postgres.py needs PostgreSQL's server binaries: install Debian's package when they are
# missing and this runs as root with apt-get; otherwise those tests skip and say why.
postgres:
	@command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
		|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
			&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
		|| echo "PostgreSQL is not installed: tests/test_postgres.py will skip"

# Flow options pass through ARGS, e.g. make run ARGS="--set train.max_epochs=5 --arch cnn".
run: install
	$(UV) run python -m flows.pipeline $(ARGS)

test: install postgres
	$(UV) run ruff check .
	$(UV) run mypy
	$(UV) run pytest -n 3 --dist loadfile --no-loadscope-reorder

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

format: install
	$(UV) run ruff format .
	$(UV) run ruff check --fix .

# docs/params.md is generated from the params schema (components/config.py); a test checks it.
docs: install
	$(UV) run python -m components.params_doc

# `dvc plots show` offline: the HTML template with vega inlined (components/offline_plots.py), then
# the page (dvc_plots/index.html): confusion matrices and attribution grids, no CDN needed.
plots: install
	$(UV) run python -m components.offline_plots
	$(UV) run dvc plots show

clean:
	rm -rf data/raw data/prepared .pytest_cache .ruff_cache
