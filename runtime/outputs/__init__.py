"""Outputs: the quantile grid (quantiles.py), the forecast table (frame.py), writing it (write.py)
and the fan chart (plot.py)."""
