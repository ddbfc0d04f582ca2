"""Per-well statistics of per-cell measurements: the demo's program, standing in for yours.

Reads every CSV file under --input (one row per cell, a header, numeric measurement columns),
writes --output/stats.json with count, mean, standard deviation, min and max of each column.
Exits 2, naming the row and column, when a value is not a number.
"""

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path


def column_stats(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), 6),
        "stdev": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--label", required=True)
    args = parser.parse_args()

    files = sorted(args.input.rglob("*.csv"))
    if not files:
        print(f"no CSV file under {args.input}", file=sys.stderr)
        return 2
    columns: dict[str, list[float]] = {}
    for path in files:
        with path.open(newline="") as handle:
            for row_number, row in enumerate(csv.DictReader(handle), start=2):
                for name, value in row.items():
                    if name == "cell_id":
                        continue
                    try:
                        columns.setdefault(name, []).append(float(value))
                    except ValueError:
                        print(
                            f"{path.name} row {row_number}, column '{name}': {value!r} is not a number", file=sys.stderr
                        )
                        return 2
    result = {
        "label": args.label,
        "files": [p.name for p in files],
        "columns": {n: column_stats(v) for n, v in columns.items()},
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "stats.json").write_text(json.dumps(result, indent=1))
    cells = len(next(iter(columns.values()), []))
    print(f"{args.label}: {len(files)} file(s), {cells} cells, {len(columns)} measurements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
