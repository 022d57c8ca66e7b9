"""A default QGIS style for object layers: one outline colour per class, no fill.

QGIS draws a layer without a style as filled grey polygons, which hides the
imagery under every object. A GeoPackage that geovision writes carries this
style in its ``layer_styles`` table, marked as the default, so QGIS applies
it when the layer is added (the table is the one QGIS itself writes with
"Save as Default"); for GeoJSON and Shapefile, a ``.qml`` beside the layer
does the same (``--qml``).
"""

from __future__ import annotations

import os
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

#: outline colours, one per class in class-id order (then repeated): bright, apart from vegetation and roofs
PALETTE = ("255,221,0", "255,0,255", "0,255,255", "255,102,0", "0,255,0", "255,51,51", "51,153,255", "255,255,255")
OUTLINE_MM = 0.5
STYLE_NAME = "geovision"


def qml(classes: Sequence[str], field: str = "class", colours: Sequence[str] | None = None) -> str:
    """A QGIS 3 style (QML) drawing polygons by ``field``: one outline colour per class (``colours``,
    as "R,G,B", or the palette's), no fill."""
    root = ET.Element("qgis", {"version": "3.22.0", "styleCategories": "Symbology"})
    renderer = ET.SubElement(
        root,
        "renderer-v2",
        {"type": "categorizedSymbol", "attr": field, "symbollevels": "0", "enableorderby": "0", "forceraster": "0"},
    )
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, name in enumerate(classes):
        ET.SubElement(categories, "category", {"render": "true", "symbol": str(i), "value": name, "label": name})
        _outline_symbol(symbols, str(i), colours[i] if colours else PALETTE[i % len(PALETTE)])
    ET.SubElement(root, "layerGeometryType").text = "2"  # polygons
    body = ET.tostring(root, encoding="unicode")
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n{body}\n"


def _outline_symbol(parent: ET.Element, name: str, rgb: str) -> None:
    """A fill symbol with no brush and a solid outline (the properties twice: QGIS 3.22 writes both forms)."""
    symbol = ET.SubElement(
        parent, "symbol", {"type": "fill", "name": name, "alpha": "1", "clip_to_extent": "1", "force_rhr": "0"}
    )
    layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "pass": "0", "locked": "0", "enabled": "1"})
    props = {
        "color": "0,0,0,0",
        "style": "no",
        "outline_color": f"{rgb},255",
        "outline_style": "solid",
        "outline_width": str(OUTLINE_MM),
        "outline_width_unit": "MM",
        "joinstyle": "miter",
    }
    options = ET.SubElement(layer, "Option", {"type": "Map"})
    for k, v in props.items():
        ET.SubElement(options, "Option", {"type": "QString", "name": k, "value": v})
    for k, v in props.items():
        ET.SubElement(layer, "prop", {"k": k, "v": v})


#: the table QGIS reads a layer's default style from, as QGIS creates it
_LAYER_STYLES = """CREATE TABLE IF NOT EXISTS "layer_styles" (
 "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "f_table_catalog" TEXT(256), "f_table_schema" TEXT(256),
 "f_table_name" TEXT(256), "f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT,
 "useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30),
 "update_time" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"""


def add_gpkg_style(path: Path, layer: str, style: str, description: str = "geovision default style") -> None:
    """Store ``style`` (QML) as the default style of ``layer`` in the GeoPackage ``path``.

    The table is registered in ``gpkg_contents`` as an attributes table, as
    GDAL and QGIS do, so the file stays a valid GeoPackage.
    """
    # GDAL's OGR_CURRENT_DATE fixes the layer's timestamp for reproducible files; the style's follows it
    now = os.environ.get("OGR_CURRENT_DATE") or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    con = sqlite3.connect(path)
    try:
        with con:
            (geometry_column,) = con.execute(
                "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
            ).fetchone()
            con.execute(_LAYER_STYLES)
            con.execute(
                "UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ? AND f_geometry_column = ?",
                (layer, geometry_column),
            )
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui, update_time) "
                "VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', NULL, ?)",
                (layer, geometry_column, STYLE_NAME, style, description, now),
            )
            con.execute(
                "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
                "srs_id) VALUES ('layer_styles', 'attributes', 'layer_styles', '', ?, 0)",
                (now,),
            )
            has_counts = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gpkg_ogr_contents'"
            ).fetchone()
            if has_counts:  # GDAL's cached feature counts: keep them right for the new table
                (rows,) = con.execute("SELECT count(*) FROM layer_styles").fetchone()
                con.execute("INSERT OR REPLACE INTO gpkg_ogr_contents VALUES ('layer_styles', ?)", (rows,))
    finally:
        con.close()
