"""geovision: find objects in large GeoTIFFs and write them as GIS layers.

The public API is small: :func:`detect` runs a model over a raster,
:func:`compare` says what changed between two surveys, object by object,
:func:`resolve_model` and :func:`list_models` find models, and the error
types in :mod:`geovision.errors` say what a user got wrong.
"""

from geovision.compare import Comparison, compare
from geovision.config import ModelConfig
from geovision.detect import DetectResult, RunStats, default_output, detect
from geovision.errors import (
    BandError,
    EvaluationError,
    GeoreferenceError,
    GeovisionError,
    ModelError,
    OutputError,
    RasterError,
    WeightsError,
)
from geovision.registry import list_models, resolve_model

__version__ = "0.1.0"

__all__ = [
    "BandError",
    "Comparison",
    "DetectResult",
    "EvaluationError",
    "GeoreferenceError",
    "GeovisionError",
    "ModelConfig",
    "ModelError",
    "OutputError",
    "RasterError",
    "RunStats",
    "WeightsError",
    "compare",
    "default_output",
    "detect",
    "list_models",
    "resolve_model",
]
