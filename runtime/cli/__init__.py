"""Command-line shells: dil-run (run.py) and the option groups every dil command shares (options.py)."""
