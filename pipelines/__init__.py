"""Stages: pure functions over named Arrow tables, plus the run store that persists them."""
