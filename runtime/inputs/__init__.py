"""Inputs: tables (wide table.py, long long_table.py) turned into per-series histories
(histories.py) under one set of rules (rules.py), the model's time features and covariates
(features.py, window_features.py) and the per-window scaling (scaling.py). docs/inputs.md."""
