"""Draws the harness's CSV as grouped bars: GB/s per tool, per scenario and data set.

usage: chart.py RESULTS.csv OUT.png
"""
import csv
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    groups: "OrderedDict[str, dict]" = OrderedDict()
    tools: list = []
    with open(src) as f:
        for row in csv.DictReader(f):
            key = f"{row['scenario']}\n{row['dataset']}"
            groups.setdefault(key, {})[row["tool"]] = (float(row["gbps"]), row["correct"] == "true")
            if row["tool"] not in tools:
                tools.append(row["tool"])
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(groups)), 4.8))
    width = 0.8 / max(1, len(tools))
    for i, tool in enumerate(tools):
        xs, ys = [], []
        for j, g in enumerate(groups.values()):
            if tool in g:
                xs.append(j + i * width)
                ys.append(g[tool][0] if g[tool][1] else 0.0)
        ax.bar(xs, ys, width, label=tool)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels(list(groups.keys()), fontsize=8)
    ax.set_ylabel("GB/s (median, fsync included)")
    stores_only = all(k.startswith("stores\n") for k in groups)
    ax.set_title("Pulling a model to local disk from each store on 127.0.0.1" if stores_only
                 else "Pulling to local disk from servers on 127.0.0.1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
