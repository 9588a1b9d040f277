"""``python -m vpindex`` runs the command line."""

from vpindex.cli import main

main()
