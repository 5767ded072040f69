# The two commands a researcher needs: `make demo` and `make test`.
PY := .venv/bin/python
# torch is pinned to the local CPU wheel first: a looser range would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test lint clean-venv

.venv/.installed: pyproject.toml
	test -d .venv || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: .venv/.installed
	$(PY) -m launcher.demo

test: .venv/.installed
	$(PY) -m pytest -q

lint: .venv/.installed
	.venv/bin/ruff check overparam_dist launcher tests bench

clean-venv:
	rm -rf .venv
