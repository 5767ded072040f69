"""Reading finished sweeps and drawing them: `results` (results.csv + per-trial metrics.jsonl as plain
Python/numpy data), `plots` (matplotlib figures that also return the data they drew), `html` (index.html),
`report` (everything `overparam report` writes), `wandb_report` (the W&B summary run and W&B Report).

Needs numpy and matplotlib (Agg backend); wandb and wandb-workspaces only for the W&B parts; pandas only for
`load_sweep` (`frames`), a sweep as DataFrames.
"""


def load_sweep(path):
    """`runs/<sweep>/` as pandas DataFrames: (trials, metrics); see `frames.load_sweep`."""
    from .frames import load_sweep as load

    return load(path)
