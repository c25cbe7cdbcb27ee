"""Forecasts of many series: the long-table run in one process (job.py) or on Ray (ray_job.py),
both through forecast.py (docs/scale-out.md)."""
