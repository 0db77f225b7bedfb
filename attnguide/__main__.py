"""``python -m attnguide`` (and ``torchrun -m attnguide``): the attnguide command line."""

from attnguide.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
