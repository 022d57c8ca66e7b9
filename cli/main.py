"""The ``geovision`` command: argument parsing, progress and exit codes only.

Every command calls one function of geovision's public API. Exit codes:
0 success, 2 bad input or usage, 1 unexpected failure (a bug; ``--debug``
shows its traceback).
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any, Callable

import click

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def _run(fn: Callable[[], Any], debug: bool) -> Any:
    """Call ``fn``; user errors become one stderr line and exit 2, bugs exit 1."""
    from geovision.errors import GeovisionError

    try:
        return fn()
    except GeovisionError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - anything else is a bug; say so in one line
        if debug:
            traceback.print_exc()
        click.echo(f"error: unexpected failure: {type(e).__name__}: {e} (rerun with --debug for details)", err=True)
        sys.exit(EXIT_FAILURE)


def _bands(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(b) for b in value.split(","))
    except ValueError:
        raise click.BadParameter("give 1-based band numbers separated by commas, e.g. 3,2,1") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geovision")
def main() -> None:
    """Find objects in geospatial rasters and write them as GIS layers."""


@main.command()
@click.argument("raster", type=click.Path(dir_okay=True, path_type=str))
@click.option("-m", "--model", required=True, help="Model name (see `geovision models`), model YAML, or weights file.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="Output layer: .gpkg, .geojson or .shp.")
@click.option("--conf", type=click.FloatRange(0, 1), help="Confidence threshold (default: the model's).")
@click.option("--iou", type=click.FloatRange(0, 1), help="IoU threshold for removing duplicates (default: the model's).")
@click.option("--batch-size", type=click.IntRange(1), help="Tiles per model call (default: the model's).")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--bands", callback=_bands, help="Raster bands to feed the model, e.g. 3,2,1 (default: RGB or the model's).")
@click.option("--pixel-coords", is_flag=True, help="Accept a raster without georeference and write pixel coordinates.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected failures.")
def detect(
    raster: str, model: str, output: str, conf: float | None, iou: float | None, batch_size: int | None,
    device: str | None, bands: tuple[int, ...] | None, pixel_coords: bool, overwrite: bool, quiet: bool, debug: bool,
) -> None:
    """Detect objects in RASTER and write them to OUTPUT."""
    from tqdm import tqdm

    import geovision

    bar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=total, unit="tile", desc="detect", file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        result = _run(
            lambda: geovision.detect(
                raster, model, output, device=device, batch_size=batch_size, confidence=conf, iou=iou,
                bands=bands, pixel_coords=pixel_coords, overwrite=overwrite, progress=progress,
            ),
            debug,
        )
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        s = result.stats
        per_class = ", ".join(f"{n} {c}" for c, n in sorted(s.counts.items())) or "no objects"
        click.echo(
            f"{per_class} -> {result.output} | {s.megapixels:.1f} MP in {s.seconds:.1f} s "
            f"({s.mp_per_s:.2f} MP/s, {s.tiles} tiles, {s.tiles_skipped} skipped as nodata)",
            err=True,
        )


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON list.")
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected failures.")
def models_cmd(as_json: bool, debug: bool) -> None:
    """List the named models."""
    import geovision

    found = _run(geovision.list_models, debug)
    if as_json:
        click.echo(json.dumps([m.to_summary() for m in found], indent=2))
        return
    if not found:
        click.echo("no models found")
        return
    rows = [
        (m.name, m.task, m.backend, ",".join(m.classes), str(m.tile_size), str(m.overlap),
         f"{m.resolution_m:g}" if m.resolution_m else "native", m.description)
        for m in found
    ]
    header = ("NAME", "TASK", "BACKEND", "CLASSES", "TILE", "OVERLAP", "M/PX", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


if __name__ == "__main__":  # pragma: no cover
    main()
