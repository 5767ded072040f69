"""overparam-dist: over-parameterization studies at cluster scale.

One trial is `overparam_dist.train.run_trial(cfg)` with `cfg = overparam_dist.config.load_config(...)`;
it needs only torch and omegaconf (ray, wandb, matplotlib and scikit-learn are imported where used).
"""
