"""``python -m rockgen ...`` = the ``rockgen`` command."""

from rockgen.cli import main

if __name__ == "__main__":
    main()
