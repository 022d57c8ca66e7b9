"""What the commands share: running an API call with one-line errors and exit codes, messages in the
CLI's own words, options spelled once, progress."""

from __future__ import annotations

import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import click

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and `timeout` send), raised like Ctrl-C so that temporary files go."""


def _terminate(_signum: int, _frame: Any) -> None:
    raise Terminated


def run(fn: Callable[[], Any], debug: bool) -> Any:
    """Call ``fn``; user errors become one stderr line and exit 2, bugs exit 1.

    Ctrl-C and SIGTERM unwind through every ``finally`` (temporary outputs are
    removed) and end with one line: exit 130 and 143, as shells report them.
    """
    from geovision import GeovisionError

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return fn()
    except GeovisionError as e:
        click.echo(f"error: {cli_text(str(e))}", err=True)
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


def parse_bands(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(b) for b in value.split(","))
    except ValueError:
        raise click.BadParameter("give 1-based band numbers separated by commas, e.g. 3,2,1") from None


def log_to_stderr(quiet: bool) -> None:
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


#: the Python parameters that library messages name in backquotes whose flag is not their name
#: (``class_field`` is ``--class-field`` without an entry here), or that have none
FLAGS = {
    "overwrite=True": "--overwrite",
    "align=False": "--no-align",
    "shift=(dx, dy)": "--shift DX DY",
    "image_resolution": "image_resolution in the training YAML",
    "class_field=None": "--class-field ''",
    "confidence": "--conf",
    "val_fraction=0": "--val-fraction 0",
    "pixel_coords=True": "--pixel-coords",
    "device='cpu'": "--device cpu",
    "runtime='onnx'": "--backend onnx",
    "trust=True": "--trust-model",
    "package_onnx": "--package",
    "package_onnx(MODEL)": "geovision export MODEL --package",
    "export_onnx": "geovision export",
    "review_confidence": "--review-conf",
    "task": "the task (train detect, segment or instance)",
    "options": "options in the training YAML",
    "trust_weights": "--trust-model",
    "class_weights": "class_weights in the training YAML",
    "output_stride": "output_stride in the training YAML",
    "vectorize": "vectorize in the training YAML",
}


def cli_flags() -> set[str]:
    """Every long flag of every command of the running command line (none outside one)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().command if ctx is not None else None
    commands = root.commands.values() if isinstance(root, click.Group) else [root] if root else []
    return {o for cmd in commands for p in cmd.params for o in p.opts if o.startswith("--")}


def flag_for(parameter: str) -> str | None:
    """The command line's words for a Python parameter: its entry in :data:`FLAGS`, or the flag of its
    name (``class_field``: ``--class-field``); None if it has neither."""
    flag = "--" + parameter.replace("_", "-")
    return FLAGS.get(parameter) or (flag if flag in cli_flags() else None)


def cli_text(message: str) -> str:
    """A library message in the command line's words: each `parameter` named in backquotes becomes
    its flag (a parameter with no flag keeps its name, without the quotes)."""
    return re.sub(r"`([^`]+)`", lambda m: flag_for(m.group(1)) or m.group(1), message)


class Group(click.Group):
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
object_size_option = click.option(
    "--object-size",
    type=click.FloatRange(min=0, min_open=True),
    help="Typical size of the objects in metres across (e.g. crowns of 8): objects larger than the model "
    "learned on are read at a coarser resolution, so that they are not cut into pieces.",
)
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks of unexpected failures.")
qml_option = click.option(
    "--qml", is_flag=True, help="Also write the layer's QGIS style as a .qml beside it (GeoPackages carry it inside)."
)


def together(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Several options as one decorator, listed in ``--help`` in the order given."""

    def apply(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


#: what every command takes last: -q and --debug
common_options = together(quiet_option, debug_option)
#: how a model runs: where, on which runtime, quantized or not, and whether its pickle is trusted
runtime_options = together(device_option, backend_option, quantize_option, trust_option)


class Progress:
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
