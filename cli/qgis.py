"""`geovision qgis-plugin`: the QGIS plugin zip."""

from __future__ import annotations

import click

from geovision.cli import options as opt


@click.command("qgis-plugin")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=str),
    default="geovision_qgis.zip",
    show_default=True,
    help="The plugin zip to write.",
)
@click.option("--overwrite", is_flag=True, help="Replace the zip if it exists.")
@opt.common_options
def qgis_plugin(output: str, overwrite: bool, quiet: bool, debug: bool) -> None:
    """Build the QGIS plugin (a Processing provider that runs this command) as a zip for
    QGIS's "Plugins > Manage and Install Plugins > Install from ZIP"."""
    import geovision

    path = opt.run(lambda: geovision.build_qgis_plugin(output, overwrite), debug)
    if not quiet:
        click.echo(f"{path}: install it in QGIS with Plugins > Manage and Install Plugins > Install from ZIP", err=True)
