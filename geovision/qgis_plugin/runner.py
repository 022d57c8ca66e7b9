"""Running the geovision command from QGIS: finding it, building its command line, following it.

No QGIS import here, so this is tested with the real command outside QGIS.
The command runs as a subprocess in its own environment: QGIS's Python
rarely has ONNX Runtime or torch, and QGIS's own GDAL, PROJ and Python
variables would point the other environment at the wrong libraries, so they
are left out of the subprocess's environment.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: variables QGIS sets for its own Python and libraries, never passed on
QGIS_ONLY_VARIABLES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "GDAL_DATA",
    "GDAL_DRIVER_PATH",
    "PROJ_LIB",
    "PROJ_DATA",
    "QT_PLUGIN_PATH",
    "QT_QPA_PLATFORM_PLUGIN_PATH",
)
#: what the command prints for progress with ``--progress lines``
PROGRESS_PREFIX = "progress "


class GeovisionCommandError(Exception):
    """The command could not run, or ended with an error (the message is its one line)."""


def find_executable(configured: str | None = None) -> str:
    """The geovision command: the path set in the provider's settings, else ``geovision`` on PATH."""
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise GeovisionCommandError(
            f"the geovision command set in the provider's settings ({configured}) is not an executable file"
        )
    found = shutil.which("geovision")
    if found is None:
        raise GeovisionCommandError(
            "geovision command not found on PATH; install geovision (pip install geovision) and set its path "
            "in Settings > Options > Processing > Providers > geovision"
        )
    return found


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the command: this one, less QGIS's own library and Python settings."""
    env = dict(os.environ if base is None else base)
    for name in QGIS_ONLY_VARIABLES:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"  # progress lines as they happen
    return env


def list_models(executable: str, timeout: float = 120) -> list[dict]:
    """What ``geovision models --json`` lists: name, task, classes, confidence, description, ..."""
    try:
        done = subprocess.run(
            [executable, "models", "--json"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_environment(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GeovisionCommandError(f"could not run {executable} models --json ({e})") from e
    if done.returncode != 0:
        message = error_line(done.stderr.splitlines())
        raise GeovisionCommandError(message or f"geovision models failed (exit code {done.returncode})")
    return json.loads(done.stdout)


def detect_command(
    executable: str,
    raster: str,
    model: str,
    output: str,
    confidence: float | None = None,
    device: str | None = None,
    object_size: float | None = None,
) -> list[str]:
    """The ``geovision detect`` command line for these settings (outputs replaced, as Processing does)."""
    options = _model_options(confidence, device, object_size)
    cmd = [executable, "detect", raster, "--model", model, "-o", output, *options]
    if not output.lower().endswith(".gpkg"):  # GeoPackages carry their style inside
        cmd.append("--qml")
    return [*cmd, "--overwrite"]


def batch_command(
    executable: str,
    folder: str,
    model: str,
    output_folder: str,
    confidence: float | None = None,
    device: str | None = None,
    object_size: float | None = None,
) -> list[str]:
    """The ``geovision batch`` command line (re-running it resumes where a run stopped)."""
    options = _model_options(confidence, device, object_size)
    return [executable, "batch", folder, "--model", model, "-o", output_folder, *options]


def compare_command(executable: str, before: str, after: str, output: str, align: bool = True) -> list[str]:
    """The ``geovision compare`` command line for two layers of objects."""
    cmd = [executable, "compare", before, after, "-o", output]
    if not align:
        cmd.append("--no-align")
    if not output.lower().endswith(".gpkg"):
        cmd.append("--qml")
    return [*cmd, "--overwrite"]


def _model_options(confidence: float | None, device: str | None, object_size: float | None = None) -> list[str]:
    """--conf, --device and --object-size when they differ from the command's defaults (the model's
    threshold, auto, the model's resolution)."""
    options = ["--conf", f"{confidence:g}"] if confidence is not None else []
    options += ["--object-size", f"{object_size:g}"] if object_size else []
    return options + (["--device", device] if device and device != "auto" else [])


def command_line(cmd: list[str]) -> str:
    """``cmd`` as one line to paste into a shell (POSIX quoting; on Windows, cmd.exe's)."""
    return subprocess.list2cmdline(cmd) if os.name == "nt" else shlex.join(cmd)


def error_line(stderr_lines: list[str]) -> str:
    """The command's one-line error (its last ``error: ...`` line), without the prefix."""
    for line in reversed(stderr_lines):
        if line.startswith("error: "):
            return line[len("error: ") :]
    return ""


@dataclass
class RunResult:
    returncode: int
    cancelled: bool
    lines: list[str] = field(default_factory=list)


def run(
    cmd: list[str],
    on_progress: Callable[[float], None] = lambda p: None,
    is_cancelled: Callable[[], bool] = lambda: False,
    on_line: Callable[[str], None] = lambda s: None,
    poll_s: float = 0.1,
    grace_s: float = 30.0,
) -> RunResult:
    """Run ``cmd`` (with ``--progress lines``), reporting percent done and its other stderr lines.

    On cancel the command gets SIGTERM, which makes geovision remove its
    temporary files and leave no output behind; it is killed if it has not
    ended after ``grace_s``. A failure raises GeovisionCommandError with the
    command's own one-line message.
    """
    cmd = [*cmd, "--progress", "lines"]
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=child_environment(),
            # a console window of its own would pop up on Windows for every run
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
    except OSError as e:
        raise GeovisionCommandError(f"could not start {cmd[0]} ({e.strerror or e})") from e
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line.rstrip("\r\n"))
        lines.put(None)

    reader = threading.Thread(target=read, name="geovision-stderr", daemon=True)
    reader.start()
    result = RunResult(returncode=0, cancelled=False)
    stopped_at: float | None = None
    finished = False
    while not finished:
        if is_cancelled() and stopped_at is None:
            result.cancelled = True
            stopped_at = time.monotonic()
            _stop(proc)
        if stopped_at is not None and proc.poll() is None and time.monotonic() - stopped_at > grace_s:
            proc.kill()
        try:
            line = lines.get(timeout=poll_s)
        except queue.Empty:
            continue
        if line is None:
            finished = True
        elif line.startswith(PROGRESS_PREFIX):
            done, _, total = line[len(PROGRESS_PREFIX) :].split(" ")[0].partition("/")
            if total.isdigit() and int(total) > 0:
                on_progress(100.0 * int(done) / int(total))
        else:
            result.lines.append(line)
            on_line(line)
    result.returncode = proc.wait()
    reader.join(timeout=5)
    proc.stderr.close()  # type: ignore[union-attr]
    if not result.cancelled and result.returncode != 0:
        message = error_line(result.lines) or (result.lines[-1] if result.lines else "")
        raise GeovisionCommandError(message or f"geovision ended with exit code {result.returncode}")
    return result


def _stop(proc: subprocess.Popen[str]) -> None:
    """Ask the command to stop as a scheduler would: SIGTERM, on which geovision removes its
    temporary files and exits 143 (on Windows the process is ended at once)."""
    if proc.poll() is None:
        proc.terminate()
