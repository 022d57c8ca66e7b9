"""`geovision quicklook`: a layer drawn over its raster."""

from __future__ import annotations

from typing import Any

import click

from geovision.cli import options as opt


@click.command()
@click.argument("raster", type=click.Path(path_type=str))
@click.argument("pred", required=False, type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="PNG to write.")
@click.option("--truth", type=click.Path(path_type=str), help="Truth layer: draw TP green, FP red, missed blue.")
@click.option("--size", type=click.IntRange(16), default=2048, show_default=True, help="Long side of the PNG, px.")
@click.option("--iou", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="IoU for a match.")
@click.option("--class-field", default="class", show_default=True, help="Field with class names ('' for one class).")
@click.option("--bands", callback=opt.parse_bands, help="Bands to show as RGB, e.g. 4,3,2 (default: 1,2,3 or 1).")
@click.option("--overwrite", is_flag=True, help="Replace the PNG if it exists.")
@opt.common_options
def quicklook(
    raster: str,
    pred: str | None,
    output: str,
    truth: str | None,
    class_field: str,
    quiet: bool,
    debug: bool,
    **options: Any,
) -> None:
    """Draw PRED (and --truth) over a downsampled RASTER into a PNG."""
    import geovision

    look = opt.run(
        lambda: geovision.quicklook(raster, output, pred, truth, class_field=class_field or None, **options),
        debug,
    )
    if not quiet:
        drawn = ", ".join(f"{n} {k}" for k, n in look.counts.items()) or "nothing drawn"
        click.echo(f"{look.path} ({look.width} x {look.height} px): {drawn}", err=True)
