"""The ``geovision`` command: argument parsing, progress and exit codes only.

Every command calls one function of geovision's public API. Exit codes:
0 success, 2 bad input or usage, 1 unexpected failure (a bug; ``--debug``
shows its traceback).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and `timeout` send), raised like Ctrl-C so that temporary files go."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated


def _run(fn: Callable[[], Any], debug: bool) -> Any:
    """Call ``fn``; user errors become one stderr line and exit 2, bugs exit 1.

    Ctrl-C and SIGTERM unwind through every ``finally`` (temporary outputs are
    removed) and end with one line: exit 130 and 143, as shells report them.
    """
    from geovision.errors import GeovisionError

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return fn()
    except GeovisionError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except Terminated:
        click.echo("terminated", err=True)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(128 + signal.SIGINT)
    except Exception as e:  # noqa: BLE001 - anything else is a bug; say so in one line
        if debug:
            traceback.print_exc()
        click.echo(f"error: unexpected failure: {type(e).__name__}: {e} (rerun with --debug for details)", err=True)
        sys.exit(EXIT_FAILURE)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _bands(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(b) for b in value.split(","))
    except ValueError:
        raise click.BadParameter("give 1-based band numbers separated by commas, e.g. 3,2,1") from None


def _log_to_stderr(quiet: bool) -> None:
    """geovision's notices (a model exported on first use, ...) as plain lines on stderr."""
    import logging

    logger = logging.getLogger("geovision")
    handler = next((h for h in logger.handlers if h.get_name() == "geovision-cli"), None)
    if not isinstance(handler, logging.StreamHandler):
        handler = logging.StreamHandler()
        handler.set_name("geovision-cli")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    handler.setStream(sys.stderr)  # the stderr of this call (tests swap it)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


#: Options that take several values after one flag (``--images a.tif b.tif``).
LIST_OPTIONS = ("--images", "--labels", "--classes", "--areas")


def expand_list_options(args: list[str]) -> list[str]:
    """Rewrite ``--images a b`` as ``--images a --images b`` for Click's repeated options."""
    out: list[str] = []
    current: str | None = None
    for arg in args:
        if arg in LIST_OPTIONS:
            current = arg
            out.append(arg)
            continue
        if current and not arg.startswith("-") and out[-1] != current:
            out.append(current)
        elif arg.startswith("-") or (current and out[-1] != current):
            current = None
        out.append(arg)
    return out


class _Cli(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_list_options(args))


#: Options several commands share, spelled once.
model_option = click.option(
    "-m", "--model", required=True, help="Model name (see `geovision models`), model YAML, or weights file."
)
conf_option = click.option("--conf", type=click.FloatRange(0, 1), help="Confidence threshold (default: the model's).")
device_option = click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
backend_option = click.option(
    "--backend",
    type=click.Choice(["auto", "onnx", "torch"]),
    default="auto",
    show_default=True,
    help="Runtime: auto is ONNX Runtime on the CPU (exported once, cached) and torch on a GPU.",
)
quantize_option = click.option(
    "--quantize", type=click.Choice(["int8"]), help="Run an int8 ONNX model (see docs/models.md for its accuracy)."
)
trust_option = click.option(
    "--trust-model",
    "trust",
    is_flag=True,
    help="Load a pickled .pt file even if it names more than network layers: it can run code; "
    "only for files whose source you know.",
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
progress_option = click.option(
    "--progress",
    "progress_style",
    type=click.Choice(["bar", "lines"]),
    default="bar",
    show_default=True,
    help="bar: a progress bar; lines: 'progress DONE/TOTAL' lines on stderr, for programs that run geovision.",
)
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks of unexpected failures.")
qml_option = click.option(
    "--qml", is_flag=True, help="Also write the layer's QGIS style as a .qml beside it (GeoPackages carry it inside)."
)


class _Progress:
    """The progress callback of a command: a tqdm bar (of tiles, or a cluster's bands), or
    'progress DONE/TOTAL' lines."""

    def __init__(self, quiet: bool, style: str, desc: str, unit: str = "tile") -> None:
        self.quiet, self.style, self.desc, self.unit = quiet, style, desc, unit
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.style == "lines":
            click.echo(f"progress {done}/{total}", err=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=self.unit, desc=self.desc, file=sys.stderr, dynamic_ncols=True)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geovision")
def main() -> None:
    """Find objects in geospatial rasters and write them as GIS layers."""


@main.command()
@click.argument("raster", type=click.Path(dir_okay=True, path_type=str))
@model_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=str),
    help="Output layer: .gpkg, .geojson or .shp (default: RASTER-NAME.MODEL.gpkg in the current folder).",
)
@conf_option
@click.option(
    "--iou", type=click.FloatRange(0, 1), help="IoU threshold for removing duplicates (default: the model's)."
)
@click.option("--batch-size", type=click.IntRange(1), help="Tiles per model call (default: the model's).")
@device_option
@backend_option
@quantize_option
@click.option(
    "--bands", callback=_bands, help="Raster bands to feed the model, e.g. 3,2,1 (default: RGB or the model's)."
)
@click.option("--pixel-coords", is_flag=True, help="Accept a raster without georeference and write pixel coordinates.")
@click.option(
    "--pixel-size",
    type=click.FloatRange(min=0, min_open=True),
    help="Raster without georeference: ground size of its pixels in metres, so it is read at the model's "
    "resolution (implies --pixel-coords).",
)
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
@qml_option
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
@trust_option
@progress_option
@quiet_option
@debug_option
def detect(
    raster: str,
    model: str,
    output: str | None,
    conf: float | None,
    iou: float | None,
    batch_size: int | None,
    device: str | None,
    backend: str,
    quantize: str | None,
    bands: tuple[int, ...] | None,
    pixel_coords: bool,
    pixel_size: float | None,
    mask_out: str | None,
    prob_out: str | None,
    review_conf: float | None,
    tta: bool,
    regularize: bool | None,
    qml: bool,
    workers: int | None,
    scheduler: str | None,
    band_rows: int | None,
    overwrite: bool,
    trust: bool,
    progress_style: str,
    quiet: bool,
    debug: bool,
) -> None:
    """Detect objects in RASTER and write them to a layer (-o, or RASTER-NAME.MODEL.gpkg here)."""
    import geovision

    _log_to_stderr(quiet)
    cfg = _run(lambda: geovision.resolve_model(model, trust), debug)
    if output is None:
        output = str(geovision.default_output(raster, cfg))
    distributed = workers is not None or scheduler is not None
    progress = _Progress(quiet, progress_style, "detect", unit="band" if distributed else "tile")
    try:
        result = _run(
            lambda: geovision.detect(
                raster,
                cfg,
                output,
                device=device,
                batch_size=batch_size,
                confidence=conf,
                iou=iou,
                bands=bands,
                pixel_coords=pixel_coords,
                pixel_size=pixel_size,
                overwrite=overwrite,
                mask_out=mask_out,
                prob_out=prob_out,
                regularize=regularize,
                review_confidence=review_conf,
                tta=tta,
                qml=qml,
                progress=progress,
                runtime=backend,
                quantize=quantize,
                scheduler=scheduler,
                workers=workers,
                band_rows=band_rows,
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


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON list.")
@quiet_option
@debug_option
def models_cmd(as_json: bool, quiet: bool, debug: bool) -> None:
    """List the named models."""
    import geovision

    found = _run(geovision.list_models, debug)
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
            m.description,
        )
        for m in found
    ]
    header = ("NAME", "TASK", "BACKEND", "CLASSES", "TILE", "OVERLAP", "M/PX", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


@main.command()
@click.argument("inputs")
@model_option
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=str),
    help="Output folder (default: INPUTS-NAME.MODEL in the current folder).",
)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Local worker processes.")
@click.option("--scheduler", help="Address of a dask.distributed scheduler, e.g. tcp://host:8786.")
@click.option("--dedupe", is_flag=True, help="Keep objects found in two overlapping scenes once in the merged layer.")
@conf_option
@device_option
@backend_option
@quantize_option
@trust_option
@progress_option
@quiet_option
@debug_option
def batch(
    inputs: str,
    model: str,
    output: str | None,
    workers: int,
    scheduler: str | None,
    dedupe: bool,
    conf: float | None,
    device: str | None,
    backend: str,
    quantize: str | None,
    trust: bool,
    progress_style: str,
    quiet: bool,
    debug: bool,
) -> None:
    """Run every raster in INPUTS (a folder, a glob, or a .txt list) through a model into OUTPUT.

    Re-running the same command skips scenes already done; a scene that fails is
    recorded in OUTPUT/manifest.json and the others go on.
    """
    from tqdm import tqdm

    import geovision
    from geovision.batch import SceneResult

    _log_to_stderr(quiet)
    cfg = _run(lambda: geovision.resolve_model(model, trust), debug)
    if output is None:
        output = str(geovision.default_output(inputs, cfg, suffix=""))
    bar: tqdm | None = None
    worker_bars: dict[str, tqdm] = {}
    megapixels = 0.0

    def progress(done: int, total: int, scene: SceneResult) -> None:
        """One overall bar (scenes, megapixels), and under it one line per worker."""
        nonlocal bar, megapixels
        if progress_style == "lines":
            click.echo(f"progress {done}/{total} {Path(scene.input).name} {scene.status}", err=True)
            return
        if bar is None:
            bar = tqdm(total=total, unit="scene", desc="batch", file=sys.stderr, dynamic_ncols=True)
        megapixels += scene.megapixels
        bar.set_postfix_str(f"{megapixels:.0f} MP")
        bar.update(done - bar.n)
        if scene.worker not in worker_bars:
            worker_bars[scene.worker] = tqdm(
                unit="scene", desc=f"  {scene.worker}", position=len(worker_bars) + 1, file=sys.stderr, leave=False
            )
        w = worker_bars[scene.worker]
        w.set_postfix_str(f"last: {Path(scene.input).name} {scene.status} in {scene.seconds:.0f} s")
        w.update(1)

    try:
        result = _run(
            lambda: geovision.run_batch(
                inputs,
                cfg,
                output,
                workers=workers,
                scheduler=scheduler,
                dedupe=dedupe,
                device=device,
                confidence=conf,
                runtime=backend,
                quantize=quantize,
                progress=None if quiet else progress,
            ),
            debug,
        )
    finally:
        for b in [*worker_bars.values(), bar]:
            if b is not None:
                b.close()
    if not quiet:
        done = sum(s.status == "done" for s in result.scenes)
        click.echo(
            f"{done}/{len(result.scenes)} scenes done ({result.skipped} already done before), "
            f"{result.objects} objects -> {result.merged}",
            err=True,
        )
    for s in result.failed:
        click.echo(f"failed: {s.input}: {s.error}", err=True)
    if result.failed:
        sys.exit(EXIT_BAD_INPUT)


@main.command()
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
    "settings too, for fine-tuning on your imagery) or a weights file, instead of from scratch.",
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
@device_option
@click.option("--seed", type=int)
@click.option("-o", "--output", help="Folder for the model package (model.yaml + weights).")
@click.option("--overwrite", is_flag=True, help="Replace an existing package folder.")
@click.option(
    "--trust-model",
    "trust_weights",
    is_flag=True,
    help="Start from a pickled --weights file even if it names more than network layers (it can run code).",
)
@quiet_option
@debug_option
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
    import geovision.training as training

    def spec() -> training.TrainSpec:
        raw: dict[str, Any] = training.load_train_config(config_file) if config_file else {}
        if task:
            raw["task"] = task
        for key, value in flags.items():
            if value not in (None, ()) and value is not False:
                raw[key] = list(value) if isinstance(value, tuple) else value
        return training.spec_from_mapping(raw)

    def log(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    result = _run(lambda: geovision.train(spec(), log=log), debug)
    click.echo(f"model package: {result.source}", err=True)


@main.command()
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
@trust_option
@quiet_option
@debug_option
def export(
    model: str, output: str | None, into_package: bool, overwrite: bool, trust: bool, quiet: bool, debug: bool
) -> None:
    """Export MODEL to ONNX with its model YAML embedded; `detect --model FILE.onnx` runs it."""
    import geovision

    _log_to_stderr(quiet)
    if into_package and output:
        click.echo("error: --package writes model.onnx into the package; leave out -o", err=True)
        sys.exit(EXIT_BAD_INPUT)
    cfg = _run(lambda: geovision.resolve_model(model, trust), debug)
    if into_package:
        path = _run(lambda: geovision.package_onnx(cfg, overwrite=overwrite), debug)
    else:
        path = _run(lambda: geovision.export_onnx(cfg, output, overwrite=overwrite), debug)
    click.echo(str(path))


@main.command()
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
@quiet_option
@debug_option
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
    from geovision.errors import EvaluationError
    from geovision.raster import RASTER_INPUT_SUFFIXES
    from geovision.report import summary_line, table_rows, text_table, write_report

    def run() -> Any:
        if Path(pred).suffix.lower() in RASTER_INPUT_SUFFIXES:  # a class raster: pixel metrics
            from geovision.pixel_eval import evaluate_pixels

            if area:
                raise EvaluationError("--area applies to vector predictions (object metrics), not a class raster")

            ev: Any = evaluate_pixels(pred, truth, class_field or None, list(classes) or None)
        else:
            import geovision

            ev = geovision.evaluate(pred, truth, iou=iou, class_field=class_field or None, boxes=boxes, area=area)
        if report:
            write_report(ev, report, pred, truth, overwrite=overwrite)
        return ev

    ev = _run(run, debug)
    if as_json:
        click.echo(json.dumps(ev.to_dict(), indent=2))
        return
    click.echo(summary_line(ev))
    click.echo(text_table(*table_rows(ev)))
    if report and not quiet:
        click.echo(f"report: {report}", err=True)


@main.command()
@click.argument("before", type=click.Path(path_type=str))
@click.argument("after", type=click.Path(path_type=str))
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=str), help="Change layer: .gpkg, .geojson or .shp."
)
@click.option("-m", "--model", help="BEFORE and AFTER are rasters: detect their objects with this model first.")
@conf_option
@device_option
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
@qml_option
@click.option("--overwrite", is_flag=True, help="Replace the outputs if they exist.")
@progress_option
@quiet_option
@debug_option
def compare(
    before: str,
    after: str,
    output: str,
    model: str | None,
    conf: float | None,
    device: str | None,
    iou: float,
    area_change: float,
    class_field: str,
    align: bool,
    shift: tuple[float, float] | None,
    max_shift: float,
    quicklook: str | None,
    as_json: bool,
    qml: bool,
    overwrite: bool,
    progress_style: str,
    quiet: bool,
    debug: bool,
) -> None:
    """What changed between two surveys, object by object: kept, grown, shrunk, gone, new.

    BEFORE and AFTER are layers of objects (any format and CRS), or two rasters
    with --model. The shift between them is estimated from the objects and
    applied to BEFORE before matching, unless --no-align or --shift.
    """
    import geovision

    _log_to_stderr(quiet)
    progress = _Progress(quiet, progress_style, "detect")
    try:
        result = _run(
            lambda: geovision.compare(
                before,
                after,
                output,
                model=model,
                confidence=conf,
                device=device,
                iou=iou,
                area_change=area_change,
                class_field=class_field or None,
                align=align,
                shift=shift or None,
                max_shift=max_shift,
                quicklook=quicklook,
                qml=qml,
                overwrite=overwrite,
                progress=progress,
            ),
            debug,
        )
    finally:
        progress.close()
    if not quiet:  # on stderr too, where the QGIS plugin's log reads it
        click.echo(
            f"{result.n_before} objects before, {result.n_after} after; {result.shift.describe()} -> {result.output}",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    counts = result.counts()
    classes = sorted({c for per in counts.values() for c in per})
    click.echo(f"shift: {result.shift.describe()}")
    rows = [("change", *classes, "total")]
    rows += [(change, *(str(per[c]) for c in classes), str(sum(per.values()))) for change, per in counts.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@main.command()
@click.argument("raster", type=click.Path(path_type=str))
@click.argument("pred", required=False, type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="PNG to write.")
@click.option("--truth", type=click.Path(path_type=str), help="Truth layer: draw TP green, FP red, missed blue.")
@click.option("--size", type=click.IntRange(16), default=2048, show_default=True, help="Long side of the PNG, px.")
@click.option("--iou", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="IoU for a match.")
@click.option("--class-field", default="class", show_default=True, help="Field with class names ('' for one class).")
@click.option("--bands", callback=_bands, help="Bands to show as RGB, e.g. 4,3,2 (default: 1,2,3 or 1).")
@click.option("--overwrite", is_flag=True, help="Replace the PNG if it exists.")
@quiet_option
@debug_option
def quicklook(
    raster: str,
    pred: str | None,
    output: str,
    truth: str | None,
    size: int,
    iou: float,
    class_field: str,
    bands: tuple[int, ...] | None,
    overwrite: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """Draw PRED (and --truth) over a downsampled RASTER into a PNG."""
    import geovision

    look = _run(
        lambda: geovision.quicklook(
            raster,
            output,
            pred,
            truth,
            size=size,
            iou=iou,
            class_field=class_field or None,
            bands=bands,
            overwrite=overwrite,
        ),
        debug,
    )
    if not quiet:
        drawn = ", ".join(f"{n} {k}" for k, n in look.counts.items()) or "nothing drawn"
        click.echo(f"{look.path} ({look.width} x {look.height} px): {drawn}", err=True)


@main.command("qgis-plugin")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=str),
    default="geovision_qgis.zip",
    show_default=True,
    help="The plugin zip to write.",
)
@click.option("--overwrite", is_flag=True, help="Replace the zip if it exists.")
@quiet_option
@debug_option
def qgis_plugin(output: str, overwrite: bool, quiet: bool, debug: bool) -> None:
    """Build the QGIS plugin (a Processing provider that runs this command) as a zip for
    QGIS's "Plugins > Manage and Install Plugins > Install from ZIP"."""
    from geovision.qgis_package import build_plugin_zip

    path = _run(lambda: build_plugin_zip(output, overwrite), debug)
    if not quiet:
        click.echo(f"{path}: install it in QGIS with Plugins > Manage and Install Plugins > Install from ZIP", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
