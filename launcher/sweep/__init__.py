"""Sweeps: a sweep file (spec.py) becomes a plan of trials (plans.py), run on Ray Tune (tune.py, cluster.py) by the
driver (driver.py), with a ledger that writes results.csv as trials end (progress.py). See docs/ARCHITECTURE.md."""
