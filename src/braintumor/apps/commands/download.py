"""`braintumor data download`: fetch (or take a local zip of) the public data set and verify it."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "fetch and verify the public data set"
DESCRIPTION = ("Fetch the public data set (or take a local zip), extract it with size and path checks, verify "
               "counts and content hash, and move it to DEST.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", default="data/brain-tumor-mri", metavar="DIR",
                        help="where the verified data set goes")
    parser.add_argument("--archive", metavar="ZIP", help="use a local zip instead of downloading")
    parser.add_argument("--url", default=None, help="archive URL (default: the data set's GitHub archive)")


def run(args: argparse.Namespace) -> None:
    from braintumor.data import download

    download.download(Path(args.dest), archive=Path(args.archive) if args.archive else None, url=args.url)
