.PHONY: demo test lint bench image
# The project's virtual environment (made by `make demo` / `make test`), else python3.
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
demo:   ## install into .venv and run a real sandbox end to end
	bash scripts/demo.sh
test:   ## install everything (into .venv) and run the test suite
	bash scripts/test.sh
lint:
	$(PYTHON) -m ruff check .
bench:  ## performance benchmarks: table on stdout, JSON in benchmarks/results/latest.json
	$(PYTHON) -m benchmarks
image:  ## build the offline Docker sandbox image
	bash scripts/build-image.sh
