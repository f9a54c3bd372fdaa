"""``python -m cli``: the same as the ``adstream`` console script."""

from cli.main import main

main()
