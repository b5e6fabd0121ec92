"""Hyperparameter sweeps: an Optuna study over ``params.yaml`` keys, each trial the project's own
``train`` on the prepared data's train and validation splits (docs/sweeps.md)."""
