"""Accuracy on the Testing slices of other MRI sequences: the README's "Other sequences" figures.

    python scripts/by_sequence.py REPORTS_DIR [REPORTS_DIR ...]

REPORTS_DIR is a run (its own Testing reports) or an evaluation made with `braintumor evaluate --leak-free`; the
leak-free subset is read from its metrics.json when there, else from `--leak-free-from`. The slices that are not
contrast-enhanced T1 are those listed, by eye, in docs/testing_not_t1c.csv (Training shows tumours on T1c only).
Nothing here is used by training; it measures.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from braintumor.core.run import Reports

LISTED = Path(__file__).resolve().parent.parent / "docs" / "testing_not_t1c.csv"


def leak_free_twins(reports: Reports) -> set[str] | None:
    """The Testing files with a Training twin, as the report's leak-free figures excluded them (None if absent)."""
    leak_free = reports.read_metrics().get("leak_free")
    return None if leak_free is None else set(leak_free["excluded_files"])


def count(reports: Reports, twins: set[str], sequences: dict[str, str]) -> Counter:
    """(group, right) counts: group is 'twin', 'T1c' or the listed sequence of a leak-free image."""
    tally: Counter = Counter()
    with reports.predictions.open(newline="") as handle:
        for row in csv.DictReader(handle):
            group = "twin" if row["file"] in twins else sequences.get(row["file"], "T1c")
            tally[group, row["true"] == row["predicted"]] += 1
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", type=Path, nargs="+", help="a run or evaluation folder (predictions.csv)")
    parser.add_argument("--leak-free-from", type=Path,
                        help="an evaluation made with --leak-free, for reports that lack the leak-free subset")
    args = parser.parse_args()
    with LISTED.open(newline="") as handle:
        sequences = {row["file"]: row["sequence"] for row in csv.DictReader(handle)}
    fallback = leak_free_twins(Reports(args.leak_free_from)) if args.leak_free_from else None
    listed = tuple(sorted(set(sequences.values())))
    columns = {"with a twin": ("twin",), "leak-free T1c": ("T1c",), f"leak-free {'/'.join(listed)}": listed,
               "leak-free": ("T1c", *listed)}
    print("| reports | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for path in args.reports:
        reports = Reports(path)
        twins = leak_free_twins(reports)
        twins = fallback if twins is None else twins  # an empty set is an answer: no image had a twin
        if twins is None:
            parser.error(f"{path}: no leak-free subset in its metrics.json; pass --leak-free-from EVAL_DIR")
        tally = count(reports, twins, sequences)
        cells = []
        for groups in columns.values():
            right = sum(tally[g, True] for g in groups)
            total = right + sum(tally[g, False] for g in groups)
            cells.append(f"{right} / {total}")
        print(f"| {path.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
