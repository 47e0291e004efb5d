# The README's two commands: `make demo` (the main job) and `make test` (the suite).
# Both build the environment first; `make setup` is idempotent and takes seconds once done.
VENV ?= .venv
PYTHON ?= python3.11
BIN := $(VENV)/bin

.PHONY: setup demo test lint format doctor bench clean

# Then the class archive that starts local Spark JVMs ~3 s faster (horovod_llm/jvm_archive.py;
# about 30 s once per Java and PySpark, a warning and no archive if it cannot be made).
setup:
	scripts/install-stack.sh --venv $(VENV) --python $(PYTHON)
	$(BIN)/python -m horovod_llm.jvm_archive build

demo: setup
	$(BIN)/horovod-llm run --config configs/local.yaml

# pytest exits 5 when it collects no tests: make treats that as the failure it is.
# -rs prints why each skipped test was skipped (tests/cluster without namespaces).
test: setup lint
	SPARK_LOCAL_IP=127.0.0.1 $(BIN)/python -m pytest tests -q -rs -p no:cacheprovider -n 4 --dist loadgroup --no-loadscope-reorder --durations=40

# Every benchmark (bench/run_all.py): about 2.5 hours on 2 cores, 2 of them the quality
# bench (BENCH_ARGS="--only NAME ..." runs a part); writes bench/results.json
# and the measured part of bench/results.md. BENCH_ARGS passes options (see --help).
bench: setup
	SPARK_LOCAL_IP=127.0.0.1 $(BIN)/python bench/run_all.py $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check horovod_llm tests bench
	$(BIN)/ruff format --check horovod_llm tests bench

format: setup
	$(BIN)/ruff format horovod_llm tests bench
	$(BIN)/ruff check --fix horovod_llm tests bench

doctor: setup
	$(BIN)/horovod-llm doctor

clean:
	rm -rf runs build *.egg-info
