"""geovision: find objects in large GeoTIFFs and write them as GIS layers.

One function a command, each the CLI's own: :func:`detect` runs a model over
a raster (or splits it over a Dask cluster), :func:`run_batch` a whole
survey, :func:`compare` says what changed between two surveys object by
object, :func:`evaluate` scores a layer against truth (:func:`evaluate_pixels`
a class raster; :func:`write_report` and :func:`score_table` show either),
:func:`quicklook` draws a layer over its raster, :func:`train` makes a model
package from a :func:`train_spec` and :func:`export_onnx` exports one,
:func:`build_qgis_plugin` writes the QGIS plugin; :func:`resolve_model` and
:func:`list_models` find models. Every error a user can cause is a
:class:`GeovisionError`, of one of the types exported here; messages name
the Python parameter to change in backquotes (`overwrite=True`), which the
CLI turns into its flags.
"""

from geovision.backends.export import export_onnx, package_onnx
from geovision.batch import BatchResult, SceneResult, run_batch
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
from geovision.pixel_eval import PixelEvaluation, evaluate_pixels
from geovision.qgis_package import build_plugin_zip as build_qgis_plugin
from geovision.quicklook import Quicklook, quicklook
from geovision.raster import is_raster_path
from geovision.registry import list_models, resolve_model
from geovision.report import score_table, write_report
from geovision.training import TrainSpec, train, train_spec

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
    "PixelEvaluation",
    "Quicklook",
    "RasterError",
    "RunStats",
    "SceneResult",
    "TrainSpec",
    "TrainingError",
    "WeightsError",
    "build_qgis_plugin",
    "compare",
    "default_output",
    "detect",
    "evaluate",
    "evaluate_pixels",
    "export_onnx",
    "is_raster_path",
    "list_models",
    "package_onnx",
    "quicklook",
    "resolve_model",
    "run_batch",
    "score_table",
    "train",
    "train_spec",
    "write_report",
]
