"""`python -m flows` runs the `recsys` command line."""

from flows.cli import main

main()
