"""The score network's description as the runtime needs it: its configuration (config.py: sizes,
window, patches, prediction, domain) and the frequency-domain layout (frequency.py)."""
