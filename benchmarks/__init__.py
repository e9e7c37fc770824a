"""nexus-kernel performance harness: ``python3 -m benchmarks --help``.

Every figure is measured with warm-up and many repetitions, reported as median and p95, and,
where the issue sets a target, divided by a baseline measured in the same run on the same
machine (a bare interpreter start, a plain ipykernel round trip, the docker-py call the
provider wraps, ...). Benchmarks are never unit tests: nothing here asserts on time.
"""
