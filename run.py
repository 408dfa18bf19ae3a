"""``python run.py ...`` = the ``rockgen`` command (``rockgen.cli``): kept for checkouts without an install."""

from rockgen.cli import main

if __name__ == "__main__":
    main()
