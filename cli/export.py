"""`geovision export`: a model to ONNX."""

from __future__ import annotations

import sys

import click

from geovision.cli import options as opt


@click.command()
@click.argument("model")
@click.option("-o", "--output", help="Output file (default: beside the weights).")
@click.option(
    "--package",
    "into_package",
    is_flag=True,
    help="Write model.onnx into the model's package and record it (and its sha256) in its YAML, so the "
    "package runs without torch.",
)
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@opt.trust_option
@opt.common_options
def export(
    model: str, output: str | None, into_package: bool, overwrite: bool, trust: bool, quiet: bool, debug: bool
) -> None:
    """Export MODEL to ONNX with its model YAML embedded; `detect --model FILE.onnx` runs it."""
    import geovision

    opt.log_to_stderr(quiet)
    if into_package and output:
        click.echo("error: --package writes model.onnx into the package; leave out -o", err=True)
        sys.exit(opt.EXIT_BAD_INPUT)
    cfg = opt.run(lambda: geovision.resolve_model(model, trust), debug)
    if into_package:
        path = opt.run(lambda: geovision.package_onnx(cfg, overwrite=overwrite), debug)
    else:
        path = opt.run(lambda: geovision.export_onnx(cfg, output, overwrite=overwrite), debug)
    click.echo(str(path))
