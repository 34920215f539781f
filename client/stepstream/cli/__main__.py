"""`python -m stepstream.cli`: the same as the `stepstream` console script."""

from . import main

main()
