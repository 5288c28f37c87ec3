"""Orchestration: Prefect flows, config loading and the `recsys` command line."""
