"""The sampling core: noise schedule, solver, lattice controller, token cache, the sampler loop.

Pure NumPy, float64 control math, no engine code: the sampler calls an engine through the
`Engine` contract (contracts.py) and a controller through the `Controller` contract.
"""
