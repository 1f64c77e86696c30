"""Orchestration: the runner of cells, executors, claims, status, the results store, selection,
validation, the ``--set`` configuration and ``prepare`` (the target and retain models)."""
