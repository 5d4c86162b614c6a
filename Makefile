# The two commands of the README. Both install what they need first (into .venv).
.PHONY: run test bench

run:
	@bash scripts/setup.sh
	.venv/bin/python app.py $(ARGS)

test:
	@bash scripts/setup.sh --test
	.venv/bin/python -m pytest $(PYTEST_ARGS)

bench:
	@bash scripts/setup.sh --test
	.venv/bin/python bench/bench_generate.py
