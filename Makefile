# The two commands a researcher needs: `make demo` and `make test` (the tests CI runs); `make test-fast` is the
# edit loop's tier: unit and exactness tests, no Ray, no Slurm, no multi-process run (tests/conftest.py). `make docs`
# builds the documentation site into site/ with warnings as errors.
PY := .venv/bin/python
# torch is pinned to the local CPU wheel first: a looser range would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test test-fast docs lint gallery clean-venv

.venv/.installed: pyproject.toml
	@echo "setting up .venv (once, about 2 minutes): 1/3 pip"
	test -d .venv || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	@echo "setting up .venv: 2/3 $(TORCH) (the CPU wheel)"
	$(PY) -m pip install -q $(TORCH)
	@echo "setting up .venv: 3/3 overparam-dist and its dependencies (ray, wandb, matplotlib, ..., mkdocs for the docs)"
	$(PY) -m pip install -q -e '.[dev,docs]'
	@echo "setting up .venv: done"
	touch $@

demo: .venv/.installed
	$(PY) -m launcher.demo

# Two pytest-xdist workers: the tests that use Ray or Slurm run in turn on one (they wait on those services a third
# of the time), everything else on both (tests/conftest.py).
test: .venv/.installed
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=30

# The fast tier on both cores too: one process took 3:09 for its 305 tests.
test-fast: .venv/.installed
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" --durations=15

# The README's reproductions gallery: every configs/repro/ sweep (finished trials are reused), then its claim's
# figure copied to docs/figures/ (PNG and PDF). Each sweep's wall time and the total are printed at the end.
gallery: .venv/.installed
	mkdir -p docs/figures
	@start=$$(date +%s); times=""; for c in configs/repro/*.yaml; do n=$$(basename $$c .yaml); t0=$$(date +%s); \
	  $(PY) -m launcher sweep --config $$c --resume --progress-every 60 || exit 1; \
	  cp runs/$$n/report/repro_$$n.png docs/figures/$$n.png || exit 1; \
	  cp runs/$$n/report/repro_$$n.pdf docs/figures/$$n.pdf || exit 1; \
	  times="$$times\n  $$n: $$(( $$(date +%s) - t0 )) s"; done; \
	  printf "gallery wall times on $$(nproc) cores:$$times\n  total: $$(( $$(date +%s) - start )) s\n"

# The site: the docs extra (mkdocs, mkdocs-material, mkdocstrings), the reference pages under docs/reference/
# regenerated from the code (docs/gen_ref.py; the build generates them afresh anyway), then the build, strict.
.venv/.docs: pyproject.toml .venv/.installed
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

docs: .venv/.docs
	$(PY) docs/gen_ref.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

lint: .venv/.installed
	.venv/bin/ruff check overparam_dist launcher tests bench docs

clean-venv:
	rm -rf .venv
