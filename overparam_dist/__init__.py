"""overparam-dist: over-parameterization studies at cluster scale.

One trial is `overparam_dist.train.run_trial(cfg)` with `cfg = overparam_dist.config.load_config(...)`;
it needs only torch and omegaconf (ray, wandb, matplotlib and scikit-learn are imported where used).
"""

__all__ = ["load_config", "run_trial"]


def __getattr__(name: str):
    """`from overparam_dist import load_config, run_trial`, imported when asked for (run_trial needs torch)."""
    if name == "load_config":
        from .config import load_config

        return load_config
    if name == "run_trial":
        from .train import run_trial

        return run_trial
    raise AttributeError(f"module 'overparam_dist' has no attribute {name!r}")
