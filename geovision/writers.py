"""Writing vector layers that GIS software opens as they are.

The format comes from the extension: ``.geojson`` is RFC 7946 (EPSG:4326,
longitude/latitude order), ``.gpkg`` and ``.shp`` keep the source CRS (a
Shapefile gets its ``.prj``). Every layer is written to a temporary file
beside the target and renamed into place, so a failed run leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import geopandas as gpd

from geovision.errors import OutputError

DRIVERS = {".geojson": "GeoJSON", ".json": "GeoJSON", ".gpkg": "GPKG", ".shp": "ESRI Shapefile"}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")


def check_output(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Refuse an output path before any work is done: format, folder, existing file."""
    p = Path(path)
    if p.suffix.lower() not in DRIVERS:
        raise OutputError(f"{p}: unknown output format '{p.suffix}'; use .gpkg, .geojson or .shp")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{p}: folder {parent} is not writable")
    if p.exists() and not overwrite:
        raise OutputError(f"{p} already exists; pass --overwrite to replace it")
    if p.is_dir():
        raise OutputError(f"{p} is a directory")
    return p


def write_layer(gdf: gpd.GeoDataFrame, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``gdf`` to ``path`` atomically, in the format its extension names."""
    p = check_output(path, overwrite)
    driver = DRIVERS[p.suffix.lower()]
    options: dict[str, str] = {}
    if driver == "GeoJSON" and gdf.crs is not None:
        gdf = gdf.to_crs("EPSG:4326")
        options["RFC7946"] = "YES"
    geometry_type = "Polygon" if gdf.empty else None
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    try:
        tmp = tmp_dir / p.name
        try:
            with warnings.catch_warnings():
                # pixel-coordinate layers have no CRS on purpose
                warnings.filterwarnings("ignore", message=".*crs.*was not provided")
                gdf.to_file(
                    tmp, driver=driver, engine="pyogrio", layer=p.stem if driver == "GPKG" else None,
                    geometry_type=geometry_type, layer_options=options or None,
                )
        except Exception as e:  # noqa: BLE001 - GDAL write errors come in several types
            raise OutputError(f"{p}: could not write layer ({e})") from e
        if driver == "ESRI Shapefile":
            for part in SHAPEFILE_PARTS:
                src = tmp.with_suffix(part)
                if src.exists():
                    os.replace(src, p.with_suffix(part))
        else:
            os.replace(tmp, p)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return p
