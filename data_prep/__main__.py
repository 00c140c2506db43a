"""`python -m data_prep <dataset> ...`: make the HDF5 crop files of one dataset.

Each dataset module defines `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

DATASETS = {
    "synthetic": "data_prep.synthetic",
    "lsp": "data_prep.lsp",
    "mpii": "data_prep.mpii",
    "flic": "data_prep.flic",
    "verify": "data_prep.verify",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    commands = parser.add_subparsers(dest="dataset", required=True)
    # Import only the chosen converter: the others' dependencies and errors stay out of the way.
    chosen = argv[0] if argv and argv[0] in DATASETS else None
    for name, module_name in DATASETS.items():
        command = commands.add_parser(name, help=f"see python -m data_prep {name} --help")
        if name == chosen:
            module = importlib.import_module(module_name)
            command.description = module.__doc__
            command.formatter_class = argparse.RawDescriptionHelpFormatter
            module.add_arguments(command)
    args = parser.parse_args(argv)
    return importlib.import_module(DATASETS[args.dataset]).run(args)


if __name__ == "__main__":
    sys.exit(main())
