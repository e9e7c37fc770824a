.PHONY: demo test lint bench image
demo:   ## install and run a real sandbox end to end
	bash scripts/demo.sh
test:   ## install everything and run the test suite
	bash scripts/test.sh
lint:
	python3 -m ruff check .
bench:  ## performance benchmarks: table on stdout, JSON in benchmarks/results/latest.json
	python3 -m benchmarks
image:  ## build the offline Docker sandbox image
	bash scripts/build-image.sh
