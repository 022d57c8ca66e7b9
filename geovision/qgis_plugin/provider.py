"""The "geovision" Processing provider: its algorithms, its settings, its output formats."""

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ICON, BatchAlgorithm, CompareAlgorithm, DetectAlgorithm
from .settings import EXECUTABLE_SETTING


class GeovisionProvider(QgsProcessingProvider):
    def load(self):
        from processing.core.ProcessingConfig import ProcessingConfig, Setting

        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(
            Setting(
                self.name(),
                EXECUTABLE_SETTING,
                "geovision command (full path; empty: the one found on PATH)",
                "",
                valuetype=Setting.FILE,
            )
        )
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        from processing.core.ProcessingConfig import ProcessingConfig

        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def loadAlgorithms(self):  # noqa: N802 - QGIS's name
        self.addAlgorithm(DetectAlgorithm())
        self.addAlgorithm(BatchAlgorithm())
        self.addAlgorithm(CompareAlgorithm())

    def id(self):
        return "geovision"

    def name(self):
        return "geovision"

    def longName(self):  # noqa: N802 - QGIS's name
        return "geovision: objects in geospatial imagery"

    def icon(self):
        return QIcon(ICON)

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802 - QGIS's name
        return ["gpkg", "geojson", "shp"]

    def defaultVectorFileExtension(self, hasGeometry=True):  # noqa: N802,N803 - QGIS's names
        return "gpkg"

    def supportsNonFileBasedOutput(self):  # noqa: N802 - QGIS's name
        return False  # the command writes files; temporary outputs become temporary GeoPackages
