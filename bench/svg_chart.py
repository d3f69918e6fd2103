"""A bench chart without plotting libraries: a markdown table in, an SVG bar chart out.

    python bench/bench_quant.py ... | python bench/svg_chart.py --column 3 > decode.svg

Reads the first markdown table on stdin; bars show column `--column` (1-based, after the
label) for every row whose value parses as a number.
"""

from __future__ import annotations

import argparse
import sys
from html import escape

BAR, GAP, LABEL_WIDTH, PLOT_WIDTH = 22, 8, 330, 420


def parse_table(text: str, column: int) -> tuple[str, list[tuple[str, float]]]:
    rows = [
        line.strip().strip("|").split("|")
        for line in text.splitlines()
        if line.strip().startswith("|")
    ]
    header, body = rows[0], rows[2:]
    values = []
    for cells in body:
        try:
            values.append((cells[0].strip(), float(cells[column].strip().rstrip("x"))))
        except (ValueError, IndexError):
            continue
    return header[column].strip(), values


def bar_chart(title: str, values: list[tuple[str, float]]) -> str:
    top = max(v for _, v in values) or 1.0
    height = 40 + len(values) * (BAR + GAP)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL_WIDTH + PLOT_WIDTH + 80}" '
        f'height="{height}" font-family="sans-serif" font-size="13">',
        f'<text x="10" y="22" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(values):
        y = 36 + i * (BAR + GAP)
        width = PLOT_WIDTH * value / top
        color = "#2b7bb9" if label.startswith("edge") else "#9a9a9a"
        parts += [
            f'<text x="{LABEL_WIDTH - 8}" y="{y + 16}" text-anchor="end">{escape(label)}</text>',
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width:.1f}" height="{BAR}" fill="{color}"/>',
            f'<text x="{LABEL_WIDTH + width + 6:.1f}" y="{y + 16}">{value:g}</text>',
        ]
    return "\n".join([*parts, "</svg>"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--column", type=int, default=2)
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    name, values = parse_table(sys.stdin.read(), args.column)
    sys.stdout.write(bar_chart(args.title or name, values))


if __name__ == "__main__":
    main()
