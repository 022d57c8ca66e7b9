"""The ``geovision`` command: argument parsing, progress and exit codes only.

Every command calls geovision's public API and nothing else; each lives in a
module of its own (``cli/detect.py`` ...), with what they share in
``cli/options.py``. Exit codes: 0 success, 2 bad input or usage, 1 unexpected
failure (a bug; ``--debug`` shows its traceback).
"""

from __future__ import annotations

import click

from geovision.cli.batch import batch
from geovision.cli.compare import compare
from geovision.cli.detect import detect
from geovision.cli.evaluate import evaluate
from geovision.cli.export import export
from geovision.cli.models import models_cmd
from geovision.cli.options import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, Group, expand_list_options
from geovision.cli.qgis import qgis_plugin
from geovision.cli.quicklook import quicklook
from geovision.cli.train import train

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_OK", "expand_list_options", "main"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geovision")
def main() -> None:
    """Find objects in geospatial rasters and write them as GIS layers."""


for command in (detect, models_cmd, batch, train, export, evaluate, compare, quicklook, qgis_plugin):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
