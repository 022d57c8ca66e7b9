"""The plugin: registers the geovision Processing provider for as long as it is loaded."""

from qgis.core import QgsApplication

from .provider import GeovisionProvider


class GeovisionPlugin:
    """Adds the provider at start-up (also in headless Processing, through ``initProcessing``)."""

    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 - QGIS's name
        if self.provider is None:
            self.provider = GeovisionProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS's name
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
