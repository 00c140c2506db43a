"""Check crop files: integrity, format version, provenance and sample counts.

`python -m data_prep verify FILE [FILE ...]` prints, per file, what it holds and how it was
made; it exits with status 2 (and one paragraph naming the file and the fix) at the first file
that is missing, of another format version, truncated or inconsistent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cpm_lightning.data.h5format import verify
from cpm_lightning.errors import DataFileError


def describe(path: Path, attrs: dict) -> str:
    """A few lines a researcher reads to know what a verified crop file is and where it came from."""
    provenance = attrs["provenance"]
    skipped = provenance.get("skipped") or {}  # source entry -> why the converter left it out
    examples = "; ".join(f"{entry}: {reason}" for entry, reason in list(skipped.items())[:3])
    lines = [
        f"{path}: OK (format version {attrs['format_version']})",
        f"  dataset {attrs['dataset']}, split {attrs['split']}: {attrs['num_samples']} samples, "
        f"{len(attrs['joint_names'])} joints, crops {tuple(int(v) for v in attrs['crop_size'])} "
        f"{attrs['image_encoding']}",
        f"  made by {provenance.get('converter', '?')} version {provenance.get('converter_version', '?')}, "
        f"options {json.dumps(provenance.get('options', {}), sort_keys=True)}",
        f"  sources: {len(provenance.get('source_checksums') or {})} checksummed file(s); "
        f"skipped entries: {len(skipped)}" + (f" (e.g. {examples})" if skipped else ""),
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="HDF5 crop files to check")


def run(args: argparse.Namespace) -> int:
    for path in args.files:
        try:
            attrs = verify(path)
        except DataFileError as error:
            print(f"\nerror: {error}", file=sys.stderr)
            return 2
        print(describe(path, attrs))
    return 0
