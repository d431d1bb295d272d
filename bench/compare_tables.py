"""Print the markdown tables of saved `lowbit compare --json` reports (bench/results/compare-*.json).

    PYTHONPATH=python python bench/compare_tables.py bench/results/compare-*.json
"""
from __future__ import annotations

import json
import sys

from lowbit.quant.compare import CompareReport, format_markdown

if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(format_markdown(CompareReport.from_dict(json.load(f))))
            print()
