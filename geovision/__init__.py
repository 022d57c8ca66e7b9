"""geovision: find objects in large GeoTIFFs and write them as GIS layers.

One function a command, each the CLI's own: :func:`detect` runs a model over
a raster (or splits it over a Dask cluster), :func:`run_batch` a whole
survey, :func:`compare` says what changed between two surveys object by
object, :func:`evaluate` scores a layer against truth, :func:`quicklook`
draws a layer over its raster, :func:`train` makes a model package and
:func:`export_onnx` exports one; :func:`resolve_model` and
:func:`list_models` find models. Every error a user can cause is a
:class:`GeovisionError`, of one of the types exported here.
"""

from geovision.backends.export import export_onnx, package_onnx
from geovision.batch import BatchResult, run_batch
from geovision.compare import Comparison, compare
from geovision.config import ModelConfig
from geovision.detect import DetectResult, RunStats, default_output, detect
from geovision.errors import (
    BandError,
    DeviceError,
    EvaluationError,
    GeoreferenceError,
    GeovisionError,
    LabelError,
    MissingExtraError,
    ModelError,
    OutputError,
    RasterError,
    TrainingError,
    WeightsError,
)
from geovision.evaluate import Evaluation, evaluate
from geovision.quicklook import Quicklook, quicklook
from geovision.registry import list_models, resolve_model
from geovision.training import TrainSpec, train

__version__ = "0.1.0"

__all__ = [
    "BandError",
    "BatchResult",
    "Comparison",
    "DetectResult",
    "DeviceError",
    "EvaluationError",
    "Evaluation",
    "GeoreferenceError",
    "GeovisionError",
    "LabelError",
    "MissingExtraError",
    "ModelConfig",
    "ModelError",
    "OutputError",
    "Quicklook",
    "RasterError",
    "RunStats",
    "TrainSpec",
    "TrainingError",
    "WeightsError",
    "compare",
    "default_output",
    "detect",
    "evaluate",
    "export_onnx",
    "list_models",
    "package_onnx",
    "quicklook",
    "resolve_model",
    "run_batch",
    "train",
]
