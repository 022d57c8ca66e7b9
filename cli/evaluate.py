"""`geovision evaluate`: a layer or class raster scored against truth."""

from __future__ import annotations

import json
from typing import Any

import click

from geovision.cli import options as opt


@click.command()
@click.argument("pred", type=click.Path(path_type=str))
@click.argument("truth", type=click.Path(path_type=str))
@click.option("--iou", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="IoU for a match.")
@click.option("--class-field", default="class", show_default=True, help="Field with class names ('' for one class).")
@click.option("--boxes", is_flag=True, help="Compare envelopes (box precision/recall, as DeepForest reports).")
@click.option(
    "--area", type=click.Path(path_type=str), help="Polygons of where TRUTH is complete: objects outside do not count."
)
@click.option("--classes", multiple=True, help="Class raster: names of values 1, 2, ... (default: from its tags).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON.")
@click.option("--report", type=click.Path(path_type=str), help="Also write a Markdown report (and its PR curve PNG).")
@click.option("--overwrite", is_flag=True, help="Replace the report if it exists.")
@opt.common_options
def evaluate(
    pred: str,
    truth: str,
    iou: float,
    class_field: str,
    boxes: bool,
    area: str | None,
    classes: tuple[str, ...],
    as_json: bool,
    report: str | None,
    overwrite: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """Score PRED against TRUTH (any format and CRS).

    PRED is a vector layer of objects (object metrics), or a class raster from
    `detect --mask-out` (pixel metrics; TRUTH a vector layer or a class raster
    on the same grid).
    """
    import geovision

    def run_it() -> Any:
        if geovision.is_raster_path(pred):  # a class raster: pixel metrics
            if area:
                raise geovision.EvaluationError(
                    "`area` applies to vector predictions (object metrics), not a class raster"
                )
            ev: Any = geovision.evaluate_pixels(pred, truth, class_field or None, list(classes) or None)
        else:
            ev = geovision.evaluate(pred, truth, iou=iou, class_field=class_field or None, boxes=boxes, area=area)
        if report:
            geovision.write_report(ev, report, pred, truth, overwrite=overwrite)
        return ev

    ev = opt.run(run_it, debug)
    if as_json:
        click.echo(json.dumps(ev.to_dict(), indent=2))
        return
    click.echo(geovision.score_table(ev))
    if report and not quiet:
        click.echo(f"report: {report}", err=True)
