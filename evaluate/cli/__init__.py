"""Command-line shells of the evaluation: dil-eval (eval.py), dil-bench (bench.py), dil-validate (validate.py)."""
