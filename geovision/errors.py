"""Exception types for user errors.

Every error a user can cause (bad file, bad model, bad output path) is a
``GeovisionError``; the CLI prints its message as one line and exits with
code 2. Each specific type also subclasses the fitting builtin so callers may
catch either, as rasterio does.
"""

from __future__ import annotations


class GeovisionError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class RasterError(GeovisionError, ValueError):
    """The input raster is missing, unreadable, or unusable as given."""


class GeoreferenceError(RasterError):
    """The raster has no usable georeference (no CRS or transform)."""


class BandError(RasterError):
    """The raster's bands do not fit what the model needs."""


class ModelError(GeovisionError, ValueError):
    """The model name, YAML, or weights cannot be used."""


class WeightsError(ModelError):
    """The weights are missing, corrupt, or do not match their recorded hash."""


class OutputError(GeovisionError, OSError):
    """The output path cannot be written (exists, unwritable, unknown format)."""


class DeviceError(GeovisionError, ValueError):
    """The requested device does not exist on this machine."""


class LabelError(GeovisionError, ValueError):
    """Labels cannot be read or do not fit the images."""


class TrainingError(GeovisionError, ValueError):
    """A training run cannot start with the given settings."""


class EvaluationError(GeovisionError, ValueError):
    """The layers cannot be compared as given."""


def first_line(e: BaseException) -> str:
    """The first line of a library's error message for ours, or its type when it says nothing."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class MissingExtraError(GeovisionError, ImportError):
    """A feature needs an optional part of geovision that is not installed."""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
        return False


def require(feature: str, extra: str, *modules: str) -> None:
    """One line naming the extra to install when ``modules`` are not there, never an ImportError.

    The extras (pyproject.toml): ``torch`` (GPU and torch runtimes, training,
    export), ``dask`` (``batch --scheduler``), ``reports`` (plots).
    """
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise MissingExtraError(f"{feature} needs {', '.join(missing)}: pip install 'geovision[{extra}]'")
