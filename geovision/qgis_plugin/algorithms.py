"""The Processing algorithms: "Detect objects" (one raster), "Detect objects in a folder" (batch) and
"Compare surveys" (two layers of objects, object by object).

Each builds the geovision command line, writes it to the log (to repeat the
run headless), runs it (:mod:`.runner`) with its progress in the dialog,
stops it on Cancel, and loads the result with its style.
"""

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputFolder,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
)
from qgis.PyQt.QtGui import QIcon

from . import runner
from .settings import configured_executable

ICON = os.path.join(os.path.dirname(__file__), "icon.png")
MODEL_FILE_CHOICE = "model file..."
DEVICES = ["auto", "cpu", "cuda"]
#: merged layer of a batch run, as `geovision batch` names it
MERGED = "merged.gpkg"

_models_by_command: dict = {}


def model_names():
    """Names of the models the geovision command knows (asked once per command), [] when it cannot be run."""
    try:
        executable = runner.find_executable(configured_executable())
    except runner.GeovisionCommandError:
        return []
    if executable not in _models_by_command:
        try:
            _models_by_command[executable] = [m["name"] for m in runner.list_models(executable)]
        except (runner.GeovisionCommandError, ValueError, KeyError):
            return []
    return _models_by_command[executable]


class _StyleOnLoad(QgsProcessingLayerPostProcessorInterface):
    """Applies geovision's style to a result as Processing loads it: the .qml beside the file when
    there is one, else the default style a GeoPackage carries."""

    _alive: list = []  # Processing holds only a C++ pointer: keep the Python objects

    def __init__(self, path):
        super().__init__()
        self.path = path

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS's name
        if layer is None:
            return
        qml = os.path.splitext(self.path)[0] + ".qml"
        if os.path.isfile(qml):
            layer.loadNamedStyle(qml)
        else:
            layer.loadDefaultStyle()
        layer.triggerRepaint()

    @classmethod
    def create(cls, path):
        instance = cls(path)
        cls._alive.append(instance)
        return instance


class _GeovisionAlgorithm(QgsProcessingAlgorithm):
    """What both algorithms share: the model, confidence and device parameters, and running the command."""

    def group(self):
        return "Detection"

    def groupId(self):  # noqa: N802 - QGIS's name
        return "detection"

    def icon(self):
        return QIcon(ICON)

    def createInstance(self):  # noqa: N802 - QGIS's name
        return type(self)()

    def _add_model_parameters(self):
        names = model_names()
        options = [*names, MODEL_FILE_CHOICE]
        default = "trees" if "trees" in names else options[0]
        self.addParameter(
            QgsProcessingParameterEnum("MODEL", "Model", options=options, defaultValue=default, usesStaticStrings=True)
        )
        self.addParameter(
            QgsProcessingParameterFile(
                "MODEL_FILE",
                f"Model file (when the model is '{MODEL_FILE_CHOICE}'): model.yaml, .onnx or .pt",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "CONFIDENCE",
                "Confidence threshold (empty: the model's own)",
                type=QgsProcessingParameterNumber.Double,
                minValue=0.0,
                maxValue=1.0,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "OBJECT_SIZE",
                "Typical object size in metres, e.g. crown width (empty: read at the model's resolution; larger "
                "objects than the model learned on are read coarser)",
                type=QgsProcessingParameterNumber.Double,
                minValue=0.0,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum("DEVICE", "Device", options=DEVICES, defaultValue="auto", usesStaticStrings=True)
        )

    def _settings(self, parameters, context):
        """(command, model, confidence, device, object size) from the dialog's values."""
        executable = self._executable()
        model = self.parameterAsEnumString(parameters, "MODEL", context)
        if model == MODEL_FILE_CHOICE or not model:
            model = self.parameterAsFile(parameters, "MODEL_FILE", context)
            if not model:
                raise QgsProcessingException(f"choose a model, or a model file with '{MODEL_FILE_CHOICE}'")
        confidence = None
        if parameters.get("CONFIDENCE") is not None:
            confidence = self.parameterAsDouble(parameters, "CONFIDENCE", context)
        object_size = None
        if parameters.get("OBJECT_SIZE") is not None:
            object_size = self.parameterAsDouble(parameters, "OBJECT_SIZE", context) or None
        device = self.parameterAsEnumString(parameters, "DEVICE", context) or "auto"
        return executable, model, confidence, device, object_size

    @staticmethod
    def _executable():
        """The geovision command: the provider's setting, or the one on PATH."""
        try:
            return runner.find_executable(configured_executable())
        except runner.GeovisionCommandError as e:
            raise QgsProcessingException(str(e)) from e

    def _run(self, cmd, feedback):
        feedback.pushCommandInfo("The same run from a shell (for a server, or a script):")
        feedback.pushCommandInfo(runner.command_line(cmd))
        try:
            result = runner.run(
                cmd,
                on_progress=feedback.setProgress,
                is_cancelled=feedback.isCanceled,
                on_line=feedback.pushConsoleInfo,
            )
        except runner.GeovisionCommandError as e:
            raise QgsProcessingException(str(e)) from e
        if result.cancelled:
            raise QgsProcessingException("cancelled: geovision was stopped and left no output")

    @staticmethod
    def _style_when_loaded(path, context):
        """Apply geovision's style to ``path`` if Processing loads it when the run ends."""
        if context.willLoadLayerOnCompletion(path):
            context.layerToLoadOnCompletionDetails(path).setPostProcessor(_StyleOnLoad.create(path))

    def _load_styled(self, path, name, output_name, context):
        """Have Processing load ``path`` when the run ends, with geovision's style applied."""
        if not context.willLoadLayerOnCompletion(path):
            context.addLayerToLoadOnCompletion(
                path, QgsProcessingContext.LayerDetails(name, context.project(), output_name)
            )
        self._style_when_loaded(path, context)


class DetectAlgorithm(_GeovisionAlgorithm):
    def name(self):
        return "detect"

    def displayName(self):  # noqa: N802 - QGIS's name
        return "Detect objects"

    def shortHelpString(self):  # noqa: N802 - QGIS's name
        return (
            "Finds objects (trees, buildings, ...) in a raster with a geovision model and writes them as a "
            "polygon layer in the raster's CRS, with class, class_id, score, area_m2 and source fields. "
            "The raster is read window by window at the model's ground resolution, so any size works. "
            "Runs the geovision command (found on PATH, or set in the provider's settings); the log shows "
            "the command line, to run the same job headless."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS's name
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self._add_model_parameters()
        self.addParameter(
            QgsProcessingParameterVectorDestination("OUTPUT", "Detected objects", type=QgsProcessing.TypeVectorPolygon)
        )

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS's name
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None:
            raise QgsProcessingException("no input raster")
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{layer.name()}: geovision reads raster files (GDAL), not {layer.providerType()}"
            )
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        executable, model, confidence, device, object_size = self._settings(parameters, context)
        cmd = runner.detect_command(executable, layer.source(), model, output, confidence, device, object_size)
        self._run(cmd, feedback)
        self._style_when_loaded(output, context)  # loaded only if the user asked for it
        return {"OUTPUT": output}


class BatchAlgorithm(_GeovisionAlgorithm):
    def name(self):
        return "batch"

    def displayName(self):  # noqa: N802 - QGIS's name
        return "Detect objects in a folder (batch)"

    def shortHelpString(self):  # noqa: N802 - QGIS's name
        return (
            "Runs a geovision model on every raster of a folder: one layer per raster in the output folder, and "
            "all objects in one merged layer (merged.gpkg, loaded when the run ends). Running it again on the "
            "same folders goes on where an earlier run stopped."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS's name
        self.addParameter(
            QgsProcessingParameterFile("INPUT", "Folder of rasters", behavior=QgsProcessingParameterFile.Folder)
        )
        self._add_model_parameters()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Output folder"))
        self.addOutput(QgsProcessingOutputVectorLayer("MERGED", "All objects", QgsProcessing.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputFolder("FOLDER", "Output folder"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS's name
        folder = self.parameterAsFile(parameters, "INPUT", context)
        if not folder or not os.path.isdir(folder):
            raise QgsProcessingException(f"{folder or 'input'}: not a folder")
        output = self.parameterAsString(parameters, "OUTPUT", context)
        executable, model, confidence, device, object_size = self._settings(parameters, context)
        cmd = runner.batch_command(executable, folder, model, output, confidence, device, object_size)
        self._run(cmd, feedback)
        merged = os.path.join(output, MERGED)
        if not os.path.isfile(merged):
            raise QgsProcessingException(f"geovision ended without writing {merged}")
        self._load_styled(merged, f"{os.path.basename(folder.rstrip(os.sep))} objects", "MERGED", context)
        return {"MERGED": merged, "FOLDER": output}


class CompareAlgorithm(_GeovisionAlgorithm):
    def name(self):
        return "compare"

    def displayName(self):  # noqa: N802 - QGIS's name
        return "Compare surveys"

    def shortHelpString(self):  # noqa: N802 - QGIS's name
        return (
            "What changed between two surveys of one place, object by object: every object of both layers with "
            "a change field (kept, grown, shrunk, gone, new), the matched partner's id, both areas and their IoU. "
            "The shift between the two surveys is estimated from the objects and removed before matching "
            "(unless unticked), and written to the log."
        )

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS's name
        polygons = [QgsProcessing.TypeVectorPolygon]
        self.addParameter(QgsProcessingParameterVectorLayer("BEFORE", "Objects before", polygons))
        self.addParameter(QgsProcessingParameterVectorLayer("AFTER", "Objects after", polygons))
        self.addParameter(QgsProcessingParameterBoolean("ALIGN", "Estimate and remove the shift", defaultValue=True))
        self.addParameter(
            QgsProcessingParameterVectorDestination("OUTPUT", "Changes", type=QgsProcessing.TypeVectorPolygon)
        )

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS's name
        sources = []
        for key in ("BEFORE", "AFTER"):
            layer = self.parameterAsVectorLayer(parameters, key, context)
            if layer is None or layer.providerType() != "ogr":
                raise QgsProcessingException(f"{key.lower()}: geovision reads layer files (GDAL/OGR)")
            sources.append(layer.source().split("|")[0])
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        align = self.parameterAsBoolean(parameters, "ALIGN", context)
        self._run(runner.compare_command(self._executable(), *sources, output, align), feedback)
        self._style_when_loaded(output, context)
        return {"OUTPUT": output}
