"""`geovision detect`: one raster through a model into a layer."""

from __future__ import annotations

from typing import Any

import click

from geovision.cli import options as opt


@click.command()
@click.argument("raster", type=click.Path(dir_okay=True, path_type=str))
@opt.model_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=str),
    help="Output layer: .gpkg, .geojson or .shp (default: RASTER-NAME.MODEL.gpkg in the current folder).",
)
@opt.conf_option
@click.option(
    "--iou", type=click.FloatRange(0, 1), help="IoU threshold for removing duplicates (default: the model's)."
)
@click.option("--batch-size", type=click.IntRange(1), help="Tiles per model call (default: the model's).")
@click.option(
    "--bands",
    callback=opt.parse_bands,
    help="Raster bands to feed the model, e.g. 3,2,1 (default: RGB or the model's).",
)
@click.option("--pixel-coords", is_flag=True, help="Accept a raster without georeference and write pixel coordinates.")
@click.option(
    "--pixel-size",
    type=click.FloatRange(min=0, min_open=True),
    help="Raster without georeference: ground size of its pixels in metres, so it is read at the model's "
    "resolution (implies --pixel-coords).",
)
@opt.object_size_option
@click.option("--mask-out", type=click.Path(path_type=str), help="Segmenters: also write the class raster (GeoTIFF).")
@click.option(
    "--prob-out", type=click.Path(path_type=str), help="Segmenters: also write class probabilities (GeoTIFF)."
)
@click.option(
    "--review-conf",
    type=click.FloatRange(0, 1),
    help="Detectors: also keep objects scoring from this up to the threshold, with review=1 for checking by eye.",
)
@click.option(
    "--tta",
    is_flag=True,
    help="Detectors and instance segmenters: also run each tile mirrored left-right and top-bottom and merge "
    "(3x the model time).",
)
@click.option(
    "--no-regularize",
    "regularize",
    flag_value=False,
    default=None,
    help="Segmenters and instance segmenters: keep outlines as traced (building models square them up).",
)
@opt.qml_option
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Split the raster into bands of tile rows over a local Dask cluster of this many processes.",
)
@click.option(
    "--scheduler",
    help="Split the raster over the Dask cluster at this address (tcp://host:8786); every worker must read RASTER.",
)
@click.option(
    "--band-rows",
    type=click.IntRange(1),
    help="With a cluster: tile rows a task (default: four bands a worker thread).",
)
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@opt.runtime_options
@opt.progress_option
@opt.common_options
def detect(
    raster: str,
    model: str,
    output: str | None,
    conf: float | None,
    backend: str,
    review_conf: float | None,
    trust: bool,
    progress_style: str,
    quiet: bool,
    debug: bool,
    **options: Any,
) -> None:
    """Detect objects in RASTER and write them to a layer (-o, or RASTER-NAME.MODEL.gpkg here)."""
    import geovision

    opt.log_to_stderr(quiet)
    cfg = opt.run(lambda: geovision.resolve_model(model, trust), debug)
    if output is None:
        output = str(geovision.default_output(raster, cfg))
    distributed = options["workers"] is not None or options["scheduler"] is not None
    progress = opt.Progress(quiet, progress_style, "detect", unit="band" if distributed else "tile")
    try:  # the other options are detect()'s parameters of the same names
        result = opt.run(
            lambda: geovision.detect(
                raster,
                cfg,
                output,
                confidence=conf,
                runtime=backend,
                review_confidence=review_conf,
                progress=progress,
                **options,
            ),
            debug,
        )
    finally:
        progress.close()
    if not quiet:
        s = result.stats
        per_class = ", ".join(f"{n} {c}" for c, n in sorted(s.counts.items())) or "no objects"
        if review_conf is not None:
            per_class += f" ({s.to_review} to review)"
        click.echo(
            f"{per_class} -> {result.output} | {s.megapixels:.1f} MP in {s.seconds:.1f} s "
            f"({s.mp_per_s:.2f} MP/s, {s.tiles} tiles, {s.tiles_skipped} skipped as nodata; {s.backend})",
            err=True,
        )
