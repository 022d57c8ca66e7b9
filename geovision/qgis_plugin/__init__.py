"""geovision for QGIS: a Processing provider that runs the ``geovision`` command.

This package is a QGIS plugin (installed as the folder ``geovision_qgis``;
``geovision qgis-plugin`` builds the zip). It imports QGIS and its own
modules only, never the geovision library: QGIS's Python rarely has ONNX
Runtime or torch, so the work runs in the geovision command of another
environment, as a subprocess (:mod:`.runner`).
"""


def classFactory(iface):  # noqa: N802 - the name QGIS calls
    """The plugin object QGIS loads."""
    from .plugin import GeovisionPlugin

    return GeovisionPlugin(iface)
