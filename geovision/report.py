"""Evaluation reports: a table for the terminal, Markdown with a precision-recall curve image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from geovision.errors import OutputError, require
from geovision.evaluate import Evaluation
from geovision.pixel_eval import PixelEvaluation
from geovision.writers import atomic_output, check_output

OBJECT_COLUMNS = ("tp", "fp", "fn", "precision", "recall", "f1", "ap50", "ap")
OBJECT_HEADER = ("class", "TP", "FP", "FN", "precision", "recall", "F1", "AP50", "AP50:95")
PIXEL_COLUMNS = ("tp", "fp", "fn", "iou", "f1", "precision", "recall")
PIXEL_HEADER = ("class", "TP px", "FP px", "FN px", "IoU", "F1", "precision", "recall")


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def table_rows(ev: Evaluation | PixelEvaluation) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows (one per class, then the overall or mean line) of the score table."""
    if isinstance(ev, PixelEvaluation):
        items = [*ev.per_class.items(), ("mean", ev.mean)]
        return PIXEL_HEADER, [(n, *(_fmt(getattr(s, k)) for k in PIXEL_COLUMNS)) for n, s in items]
    items2 = [*ev.per_class.items(), ("overall", ev.overall)]
    return OBJECT_HEADER, [(n, *(_fmt(getattr(s, k)) for k in OBJECT_COLUMNS)) for n, s in items2]


def text_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows])


def markdown_table(header: tuple[str, ...], rows: list[Any]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def score_table(ev: Evaluation | PixelEvaluation) -> str:
    """What was compared, then the score table, as the terminal shows them."""
    return f"{summary_line(ev)}\n{text_table(*table_rows(ev))}"


def summary_line(ev: Evaluation | PixelEvaluation) -> str:
    if isinstance(ev, PixelEvaluation):
        return f"{ev.pixels} pixels compared, in {ev.crs or 'pixel coordinates'}"
    return f"{ev.n_pred} predictions, {ev.n_truth} truth objects, IoU >= {ev.iou}, in {ev.crs}"


def write_report(
    ev: Evaluation | PixelEvaluation,
    path: str | os.PathLike[str],
    pred: str,
    truth: str,
    overwrite: bool = True,
) -> Path:
    """A Markdown report: inputs, the score table, the confusion matrix when there are several
    classes, and (objects with scores) a precision-recall curve saved as ``<report>-pr.png``."""
    out = Path(path)
    check_output(out, overwrite, suffixes=(".md",))
    header, rows = table_rows(ev)
    kind = "Pixel" if isinstance(ev, PixelEvaluation) else "Object"
    parts = [
        f"# {kind} evaluation",
        f"- predictions: `{pred}`\n- truth: `{truth}`\n- {summary_line(ev)}",
        "## Scores",
        markdown_table(header, rows),
    ]
    if ev.confusion is not None and len(ev.labels) > 2:
        if isinstance(ev, PixelEvaluation):
            note = "Pixels; rows are truth, columns prediction."
        else:
            note = (
                "Objects matched one to one whatever their class; rows are truth, columns prediction; "
                "'none' counts unmatched objects."
            )
        cm = [(f"**{label}**", *row) for label, row in zip(ev.labels, ev.confusion.tolist())]
        parts += ["## Confusion matrix", note, markdown_table(("truth \\ pred", *ev.labels), cm)]
    if isinstance(ev, Evaluation) and ev.curves:
        image = out.with_name(f"{out.stem}-pr.png")
        pr_curve_image(ev, image)
        parts += [
            "## Precision-recall",
            f"At IoU {ev.iou}, predictions taken in decreasing score order.",
            f"![precision-recall]({image.name})",
        ]
    try:
        with atomic_output(out) as tmp:
            tmp.write_text("\n\n".join(parts) + "\n")
    except OSError as e:
        raise OutputError(f"{out}: cannot write the report ({e.strerror})") from e
    return out


def pr_curve_image(ev: Evaluation, path: Path) -> Path:
    """Precision against recall, one line per class, as a PNG.

    Drawn on a Figure of its own with the Agg canvas: no pyplot, so the
    caller's matplotlib backend (a notebook's, say) is left as it is.
    """
    require("the precision-recall curve of a report", "reports", "matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (recall, precision) in ev.curves.items():
        ap = ev.per_class[name].ap50
        ax.plot(np.r_[0, recall], np.r_[1, precision], label=f"{name} (AP50 {ap:.3f})" if ap is not None else name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"IoU {ev.iou}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp)
    return path
