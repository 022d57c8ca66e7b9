"""`geovision batch`: every raster of a survey, resumable, optionally on a Dask cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from geovision.cli import options as opt


@click.command()
@click.argument("inputs")
@opt.model_option
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=str),
    help="Output folder (default: INPUTS-NAME.MODEL in the current folder).",
)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Local worker processes.")
@click.option("--scheduler", help="Address of a dask.distributed scheduler, e.g. tcp://host:8786.")
@click.option("--dedupe", is_flag=True, help="Keep objects found in two overlapping scenes once in the merged layer.")
@opt.conf_option
@opt.object_size_option
@opt.runtime_options
@opt.progress_option
@opt.common_options
def batch(
    inputs: str,
    model: str,
    output: str | None,
    conf: float | None,
    backend: str,
    trust: bool,
    progress_style: str,
    quiet: bool,
    debug: bool,
    **options: Any,
) -> None:
    """Run every raster in INPUTS (a folder, a glob, or a .txt list) through a model into OUTPUT.

    Re-running the same command skips scenes already done; a scene that fails is
    recorded in OUTPUT/manifest.json and the others go on.
    """
    from tqdm import tqdm

    import geovision

    opt.log_to_stderr(quiet)
    cfg = opt.run(lambda: geovision.resolve_model(model, trust), debug)
    if output is None:
        output = str(geovision.default_output(inputs, cfg, suffix=""))
    bar: tqdm | None = None
    worker_bars: dict[str, tqdm] = {}
    megapixels = 0.0

    def progress(done: int, total: int, scene: geovision.SceneResult) -> None:
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
        result = opt.run(
            lambda: geovision.run_batch(  # the other options are run_batch()'s parameters of the same names
                inputs, cfg, output, confidence=conf, runtime=backend, progress=None if quiet else progress, **options
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
        sys.exit(opt.EXIT_BAD_INPUT)
