# One short command per common task; each runs in the active venv (docs/contributing.md).
.PHONY: test lint format gpu-check gpu-check-full

test:
	python -m pytest

lint:
	ruff check .
	ruff format --check .

format:
	ruff check --fix .
	ruff format .

gpu-check:
	bash benchmarks/gpu_check.sh quick

gpu-check-full:
	bash benchmarks/gpu_check.sh full
