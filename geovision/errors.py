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
