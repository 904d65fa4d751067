"""The report's two plots as PNG bytes: test accuracy per network, and the training curves.

Matplotlib without pyplot (a ``Figure`` and the Agg canvas): no global backend state, so it is safe inside
actors and threads.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PLOT_DPI = 120


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # no pyplot: no global backend state, safe inside actors and threads
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    return buf.getvalue()


def plot_accuracy(report: dict) -> bytes:
    """Bar chart of test accuracy: baseline, each branch, each ensemble."""
    bars = []  # (label, accuracy, colour)
    if report.get("baseline") and report["baseline"].get("test_acc") is not None:
        bars.append(("baseline", report["baseline"]["test_acc"], "0.4"))
    bars += [
        (f"branch {b['k']}", b["test_acc"], "tab:blue") for b in report["branches"] if b.get("test_acc") is not None
    ]
    bars += [
        (f"ensemble ({e['method']})", e["test_acc"], "tab:orange")
        for e in report["ensembles"]
        if e.get("test_acc") is not None
    ]
    fig = Figure(figsize=(max(4.0, 0.7 * len(bars) + 1.5), 3.5))
    ax = fig.add_subplot()
    if bars:
        labels, accs, colours = zip(*bars)
        pos = range(len(bars))
        ax.bar(pos, [100 * a for a in accs], color=colours)
        for x, a in zip(pos, accs):
            ax.annotate(f"{100 * a:.1f}", (x, 100 * a), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(pos), labels, rotation=45, ha="right")
        low = max(0.0, 100 * min(accs) - 5.0)  # zoom in: the differences are a few points
        ax.set_ylim(low // 5 * 5, 100 * max(accs) + 4.0)  # headroom for the value labels
    else:
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{report['source'].get('name', '')} K={report['split']['K']}: branches vs ensembles", fontsize=9)
    return _png(fig)


def plot_training_curves(report: dict) -> bytes:
    """Per-branch training loss and validation accuracy against epoch (baseline dashed, ensembles dotted)."""
    fig = Figure(figsize=(9.0, 3.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    runs = [(f"branch {b['k']}", b["metrics"], {}) for b in report["branches"]]
    if report.get("baseline"):
        runs.append(("baseline", report["baseline"]["metrics"], {"color": "black", "linestyle": "--"}))
    for label, metrics, style in runs:
        if not metrics:
            continue
        epochs = [m["epoch"] for m in metrics]
        ax_loss.plot(epochs, [m.get("loss", float("nan")) for m in metrics], label=label, **style)
        ax_acc.plot(
            epochs,
            [100 * m["val_acc"] if m.get("val_acc") is not None else float("nan") for m in metrics],
            label=label,
            **style,
        )
    for i, e in enumerate(report["ensembles"]):  # colours after the branches' (axhline does not advance the cycle)
        if e.get("val_acc") is not None:
            ax_acc.axhline(
                100 * e["val_acc"],
                linestyle=":",
                linewidth=1.5,
                color=f"C{(len(runs) + i) % 10}",
                label=f"ensemble ({e['method']})",
            )
    ax_loss.set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)
