.PHONY: demo test lint bench image
demo:   ## install and run a real sandbox end to end
	bash scripts/demo.sh
test:   ## install everything and run the test suite
	bash scripts/test.sh
lint:
	python3 -m ruff check .
image:  ## build the offline Docker sandbox image
	bash scripts/build-image.sh
