"""Drives the geovision QGIS plugin in a real, headless QGIS; run by tests/test_qgis.py with QGIS's Python.

    python3 tests/qgis_session.py --plugins DIR --exe GEOVISION --work DIR --raster R --big B --folder F --plain P
    python3 tests/qgis_session.py ... --screenshots docs/img      # under Xvfb, for docs/qgis.md

DIR holds the unzipped plugin (geovision_qgis/), as "Install from ZIP" leaves it. It prints one JSON
object with what it found; the assertions are made by the test on this side of the process boundary,
in the project's own Python. This file needs QGIS's Python (qgis, processing), not geovision's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugins", required=True)
    ap.add_argument("--exe", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--raster", required=True)
    ap.add_argument("--big", required=True, help="a raster large enough to cancel half-way")
    ap.add_argument("--folder", required=True, help="a folder of rasters for the batch algorithm")
    ap.add_argument("--plain", required=True, help="a raster without georeference (a bad input)")
    ap.add_argument("--screenshots", help="folder for the dialog and map screenshots (needs a display)")
    args = ap.parse_args()
    gui = bool(args.screenshots)
    if not gui:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    sys.path[:0] = [args.plugins, "/usr/share/qgis/python/plugins"]

    from qgis.core import QgsApplication

    # a profile of this run's own: the settings the checks write (the plugin's executable) never
    # reach the user's QGIS, where a path from a deleted checkout would break their next run
    profile = Path(args.work) / "qgis-profile"
    profile.mkdir(parents=True, exist_ok=True)
    app = QgsApplication([], gui, str(profile))
    app.initQgis()
    try:
        report = run_checks(args, gui)
    finally:
        app.exitQgis()
    print(json.dumps(report))


class Recorder:
    """A Processing feedback that keeps what the algorithm logged, and can cancel at the first progress."""

    def __new__(cls, cancel_at_progress: bool = False):
        from qgis.core import QgsProcessingFeedback

        class _Feedback(QgsProcessingFeedback):
            def __init__(self) -> None:
                super().__init__()
                self.commands: list[str] = []
                self.console: list[str] = []
                self.progress_seen: list[float] = []
                self.progressChanged.connect(self._progress)

            def _progress(self, value: float) -> None:
                self.progress_seen.append(value)
                if cancel_at_progress and value > 0:
                    self.cancel()

            def pushCommandInfo(self, info: str) -> None:  # noqa: N802 - QGIS's name
                self.commands.append(info)

            def pushConsoleInfo(self, info: str) -> None:  # noqa: N802 - QGIS's name
                self.console.append(info)

        return _Feedback()


def layer_facts(path: str) -> dict:
    """What a user sees of a layer file added to QGIS: features, CRS, fields, and the style it opens with."""
    from qgis.core import QgsVectorLayer
    from qgis.PyQt.QtCore import Qt

    layer = QgsVectorLayer(path, "result", "ogr")
    renderer = layer.renderer()
    facts = {
        "valid": layer.isValid(),
        "count": layer.featureCount(),
        "crs": layer.crs().authid(),
        "fields": [f.name() for f in layer.fields()],
        "renderer": renderer.type() if renderer else None,
        "styles_in_file": layer.listStylesInDatabase()[0] if path.endswith(".gpkg") else 0,
        "boxes": sorted(
            [round(v, 2) for v in (b.xMinimum(), b.yMinimum(), b.xMaximum(), b.yMaximum())]
            for b in (f.geometry().boundingBox() for f in layer.getFeatures())
        ),
    }
    if renderer is not None and renderer.type() == "categorizedSymbol":
        facts["class_field"] = renderer.classAttribute()
        categories = renderer.categories()  # the symbols belong to these copies: keep them alive
        facts["categories"] = [c.value() for c in categories]
        facts["no_fill"] = all(c.symbol().symbolLayer(0).brushStyle() == Qt.NoBrush for c in categories)
        facts["outline_colours"] = [c.symbol().symbolLayer(0).strokeColor().name() for c in categories]
    return facts


def run_checks(args: argparse.Namespace, gui: bool) -> dict:
    import processing
    from processing.core.Processing import Processing
    from processing.core.ProcessingConfig import ProcessingConfig
    from qgis.core import QgsApplication, QgsProcessingException, QgsProject

    Processing.initialize()
    import geovision_qgis

    plugin = geovision_qgis.classFactory(None)
    plugin.initProcessing()
    ProcessingConfig.setSettingValue("GEOVISION_EXECUTABLE", args.exe)
    provider = QgsApplication.processingRegistry().providerById("geovision")
    provider.refreshAlgorithms()  # the model list comes from the command set above
    work = Path(args.work)
    report: dict = {
        "qgis": __import__("qgis.core", fromlist=["Qgis"]).Qgis.QGIS_VERSION,
        "algorithms": sorted(a.id() for a in provider.algorithms()),
        "model_options": provider.algorithm("detect").parameterDefinition("MODEL").options(),
    }

    # detect, to a GeoPackage, as processing.run does it
    feedback = Recorder()
    out = str(work / "trees.gpkg")
    result = processing.run(
        "geovision:detect", {"INPUT": args.raster, "MODEL": "trees", "OUTPUT": out}, feedback=feedback
    )
    report["detect"] = {"output": result["OUTPUT"], **layer_facts(result["OUTPUT"])}
    report["detect"]["commands"] = feedback.commands
    report["detect"]["progress"] = feedback.progress_seen[-1] if feedback.progress_seen else None

    # the logged command line, run as it is from a shell, gives the same layer
    logged = [c for c in feedback.commands if " detect " in c][-1]
    again = shlex.split(logged)
    again[again.index("-o") + 1] = str(work / "again.gpkg")
    subprocess.run(again, check=True, capture_output=True)
    report["logged_command"] = {"line": logged, **layer_facts(str(work / "again.gpkg"))}

    # compare surveys: the detected layer against itself, every object kept, styled by change
    feedback = Recorder()
    changes = processing.run(
        "geovision:compare", {"BEFORE": out, "AFTER": out, "OUTPUT": str(work / "changes.gpkg")}, feedback=feedback
    )
    report["compare"] = {"console": feedback.console, **layer_facts(changes["OUTPUT"])}

    # a GeoJSON output gets its .qml, and a temporary output is a GeoPackage
    geojson = str(work / "trees.geojson")
    processing.run("geovision:detect", {"INPUT": args.raster, "MODEL": "trees", "OUTPUT": geojson})
    report["geojson"] = {"qml": os.path.isfile(str(work / "trees.qml")), **layer_facts(geojson)}
    temporary = processing.run(
        "geovision:detect", {"INPUT": args.raster, "MODEL": "trees", "OUTPUT": "TEMPORARY_OUTPUT"}
    )
    report["temporary_output"] = temporary["OUTPUT"]

    # run and load, as the dialog does: the result is in the project, styled
    project = QgsProject.instance()
    loaded = processing.runAndLoadResults(
        "geovision:detect", {"INPUT": args.raster, "MODEL": "trees", "OUTPUT": str(work / "loaded.gpkg")}
    )
    layer = next((ly for ly in project.mapLayers().values() if ly.source().split("|")[0] == loaded["OUTPUT"]), None)
    report["loaded"] = {
        "in_project": layer is not None,
        "renderer": layer.renderer().type() if layer is not None else None,
        "count": layer.featureCount() if layer is not None else None,
    }

    # batch: one merged layer, loaded and styled
    batch_out = str(work / "survey")
    merged = processing.runAndLoadResults(
        "geovision:batch", {"INPUT": args.folder, "MODEL": "trees", "OUTPUT": batch_out}
    )
    merged_layers = [ly for ly in project.mapLayers().values() if ly.source().split("|")[0] == merged["MERGED"]]
    report["batch"] = {
        "merged": merged["MERGED"],
        "loaded": len(merged_layers),
        "loaded_renderer": merged_layers[0].renderer().type() if merged_layers else None,
        "files": sorted(str(p.relative_to(batch_out)) for p in Path(batch_out).rglob("*.gpkg")),
        **layer_facts(merged["MERGED"]),
    }

    # cancel half-way: the command is stopped and no output is left
    cancelled_out = work / "cancelled" / "big.gpkg"
    cancelled_out.parent.mkdir()
    feedback = Recorder(cancel_at_progress=True)
    try:
        processing.run(
            "geovision:detect", {"INPUT": args.big, "MODEL": "trees", "OUTPUT": str(cancelled_out)}, feedback=feedback
        )
        report["cancel"] = {"raised": None}
    except QgsProcessingException as e:
        report["cancel"] = {"raised": str(e)}
    report["cancel"]["progress"] = feedback.progress_seen
    report["cancel"]["left"] = sorted(os.listdir(cancelled_out.parent))

    # bad input: the command's own one-line message
    try:
        processing.run("geovision:detect", {"INPUT": args.plain, "MODEL": "trees", "OUTPUT": str(work / "bad.gpkg")})
        report["bad_input"] = {"raised": None}
    except QgsProcessingException as e:
        report["bad_input"] = {"raised": str(e)}
    report["bad_input"]["left"] = os.path.exists(work / "bad.gpkg")
    try:
        processing.run(
            "geovision:detect",
            {"INPUT": args.raster, "MODEL": "model file...", "OUTPUT": str(work / "nomodel.gpkg")},
        )
        report["no_model_file"] = None
    except QgsProcessingException as e:
        report["no_model_file"] = str(e)

    if gui:
        report["screenshots"] = screenshots(args, Path(args.screenshots), str(work / "loaded.gpkg"))
    plugin.unload()
    return report


def screenshots(args: argparse.Namespace, folder: Path, result: str) -> list[str]:
    """The Detect dialog and a styled result over its raster, as QGIS windows on the display."""
    import processing
    from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtCore import QEventLoop, QTimer
    from qgis.PyQt.QtWidgets import QApplication

    def settle(ms: int = 1500) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec_()

    def grab(widget, name: str) -> str:
        widget.raise_()
        widget.activateWindow()
        settle()
        path = folder / name
        screen = QApplication.primaryScreen()
        geometry = widget.frameGeometry()
        screen.grabWindow(0, geometry.x(), geometry.y(), geometry.width(), geometry.height()).save(str(path))
        return str(path)

    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    raster = QgsRasterLayer(args.raster, Path(args.raster).stem)
    QgsProject.instance().addMapLayer(raster)
    # the dialog asks QGIS's interface for its main window and canvas: a small stand-in for both
    import processing.tools.general
    from qgis.PyQt.QtWidgets import QMainWindow

    class Interface:
        def __init__(self) -> None:
            self.window = QMainWindow()
            self.canvas = QgsMapCanvas(self.window)

        def mainWindow(self):  # noqa: N802 - QGIS's name
            return self.window

        def mapCanvas(self):  # noqa: N802 - QGIS's name
            return self.canvas

    processing.tools.general.iface = Interface()
    dialog = processing.createAlgorithmDialog("geovision:detect", {"INPUT": raster.id(), "MODEL": "trees"})
    dialog.resize(900, 640)
    dialog.move(10, 10)
    dialog.show()
    saved.append(grab(dialog, "qgis-detect-dialog.png"))
    dialog.close()

    objects = QgsVectorLayer(result, "trees (geovision)", "ogr")
    canvas = QgsMapCanvas()
    canvas.setWindowTitle("geovision result over OSBS_029.tif")
    canvas.setDestinationCrs(raster.crs())
    canvas.setLayers([objects, raster])
    canvas.setExtent(raster.extent())
    canvas.resize(760, 760)
    canvas.move(10, 10)
    canvas.show()
    canvas.refresh()
    canvas.waitWhileRendering()
    saved.append(grab(canvas, "qgis-styled-result.png"))
    canvas.close()
    return saved


if __name__ == "__main__":
    main()
