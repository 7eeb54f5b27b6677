"""``python -m lmo``: see :mod:`lmo.cli`."""

from lmo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
