"""Small shared utilities: atomic file writes and sha256 (files.py), optional dependencies (deps.py)."""
