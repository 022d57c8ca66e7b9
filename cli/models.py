"""`geovision models`: the named models."""

from __future__ import annotations

import json

import click

from geovision.cli import options as opt


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON list.")
@opt.common_options
def models_cmd(as_json: bool, quiet: bool, debug: bool) -> None:
    """List the named models."""
    import geovision

    found = opt.run(geovision.list_models, debug)
    if as_json:
        click.echo(json.dumps([m.to_summary() for m in found], indent=2))
        return
    if not found:
        if not quiet:
            click.echo("no models found", err=True)
        return
    rows = [
        (
            m.name,
            m.task,
            m.backend,
            ",".join(m.classes),
            str(m.tile_size),
            str(m.overlap),
            f"{m.resolution_m:g}" if m.resolution_m else "native",
            f"{m.object_size_m:g} m" if m.object_size_m else "",
            m.description,
        )
        for m in found
    ]
    header = ("NAME", "TASK", "BACKEND", "CLASSES", "TILE", "OVERLAP", "M/PX", "OBJECTS", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
