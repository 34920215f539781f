"""stepstream's benchmark harness: `make bench` (== `python -m bench`).

Everything runs on loopback and is started by the harness itself: `stepstream serve`, a no-op
gRPC sink of the same protocol (the stack's ceiling), an MLflow tracking server (the baseline)
and driver processes. Figures are medians of several repetitions, and every ratio compares
values measured in the same run.

This package must stay importable with the standard library alone: `bench.mlflow_driver` runs
in MLflow's own virtual environment, where stepstream is not installed.
"""
