"""`geovision compare`: two surveys, object by object."""

from __future__ import annotations

import json
from typing import Any

import click

from geovision.cli import options as opt


@click.command()
@click.argument("before", type=click.Path(path_type=str))
@click.argument("after", type=click.Path(path_type=str))
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=str), help="Change layer: .gpkg, .geojson or .shp."
)
@click.option("-m", "--model", help="BEFORE and AFTER are rasters: detect their objects with this model first.")
@opt.conf_option
@opt.device_option
@click.option(
    "--iou", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="IoU for a match (as evaluate)."
)
@click.option(
    "--area-change",
    type=click.FloatRange(0, min_open=True),
    default=0.25,
    show_default=True,
    help="Matched objects whose area changed by more than this share are grown or shrunk.",
)
@click.option("--class-field", default="class", show_default=True, help="Field with class names ('' for one class).")
@click.option("--no-align", "align", flag_value=False, default=True, help="Compare the layers where they lie.")
@click.option(
    "--shift", nargs=2, type=float, metavar="DX DY", help="Move BEFORE by DX metres east, DY north (no estimate)."
)
@click.option(
    "--max-shift",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Largest shift between the surveys to look for, in metres.",
)
@click.option("--quicklook", type=click.Path(path_type=str), help="Also draw the changes over the AFTER raster (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Summary as machine-readable JSON.")
@opt.qml_option
@click.option("--overwrite", is_flag=True, help="Replace the outputs if they exist.")
@opt.progress_option
@opt.common_options
def compare(
    before: str,
    after: str,
    output: str,
    conf: float | None,
    class_field: str,
    shift: tuple[float, float] | None,
    as_json: bool,
    progress_style: str,
    quiet: bool,
    debug: bool,
    **options: Any,
) -> None:
    """What changed between two surveys, object by object: kept, grown, shrunk, gone, new.

    BEFORE and AFTER are layers of objects (any format and CRS), or two rasters
    with --model. The shift between them is estimated from the objects and
    applied to BEFORE before matching, unless --no-align or --shift.
    """
    import geovision

    opt.log_to_stderr(quiet)
    progress = opt.Progress(quiet, progress_style, "detect")
    try:
        result = opt.run(
            lambda: geovision.compare(  # the other options are compare()'s parameters of the same names
                before,
                after,
                output,
                confidence=conf,
                class_field=class_field or None,
                shift=shift or None,
                progress=progress,
                **options,
            ),
            debug,
        )
    finally:
        progress.close()
    if not quiet:  # on stderr too, where the QGIS plugin's log reads it
        click.echo(
            f"{result.n_before} objects before, {result.n_after} after; {opt.cli_text(result.shift.describe())} "
            f"-> {result.output}",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    counts = result.counts()
    classes = sorted({c for per in counts.values() for c in per})
    click.echo(f"shift: {opt.cli_text(result.shift.describe())}")
    rows = [("change", *classes, "total")]
    rows += [(change, *(str(per[c]) for c in classes), str(sum(per.values()))) for change, per in counts.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
