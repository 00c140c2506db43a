"""`python -m data_prep <dataset> ...`: make the HDF5 crop files of one dataset.

Each dataset module defines `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

DATASETS = {
    "synthetic": "data_prep.synthetic",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    commands = parser.add_subparsers(dest="dataset", required=True)
    modules = {}
    for name, module_name in DATASETS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(commands.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return modules[args.dataset].run(args)


if __name__ == "__main__":
    sys.exit(main())
