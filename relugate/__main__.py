"""``python -m relugate``: the same as the ``relugate`` command."""

from relugate.compiler.cli import main

if __name__ == "__main__":
    main()
