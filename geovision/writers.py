"""Writing vector layers that GIS software opens as they are.

The format comes from the extension: ``.geojson`` is RFC 7946 (EPSG:4326,
longitude/latitude order), ``.gpkg`` and ``.shp`` keep the source CRS (a
Shapefile gets its ``.prj``). Every layer is written to a temporary file
beside the target and renamed into place, so a failed run leaves nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.shutil

from geovision import style
from geovision.blend import Strip
from geovision.errors import OutputError
from geovision.raster import ReadPlan

DRIVERS = {".geojson": "GeoJSON", ".json": "GeoJSON", ".gpkg": "GPKG", ".shp": "ESRI Shapefile"}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
RASTER_SUFFIXES = (".tif", ".tiff")


@contextlib.contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """A temporary name beside ``out`` (same suffix) to write to; it becomes ``out`` only if the
    block succeeds, so a failed run never leaves half a file."""
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


#: the fields of every object layer geovision writes, in this order (then the geometry)
OBJECT_COLUMNS = ("class", "class_id", "score", "area_m2", "source")


def check_output(
    path: str | os.PathLike[str], overwrite: bool = False, raster: bool = False, suffixes: tuple[str, ...] = ()
) -> Path:
    """Refuse an output path before any work is done: format, folder, existing file.

    ``suffixes`` names the formats of an output that is neither a layer nor a raster.
    """
    p = Path(path)
    if suffixes:
        if p.suffix.lower() not in suffixes:
            raise OutputError(f"{p}: use a name ending in {' or '.join(suffixes)}")
    elif raster and p.suffix.lower() not in RASTER_SUFFIXES:
        raise OutputError(f"{p}: raster outputs are GeoTIFFs; use a .tif name")
    elif not raster and p.suffix.lower() not in DRIVERS:
        raise OutputError(f"{p}: unknown output format '{p.suffix}'; use .gpkg, .geojson or .shp")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{p}: folder {parent} is not writable")
    # a Shapefile is several files: an unrelated o.dbf or a stale o.prj makes o.shp "existing" too
    parts = [p.with_suffix(x) for x in SHAPEFILE_PARTS] if p.suffix.lower() == ".shp" else [p]
    existing = next((q for q in parts if q.exists()), None)
    if existing is not None and not overwrite:
        raise OutputError(f"{existing} already exists; pass `overwrite=True` to replace it")
    if p.is_dir():
        raise OutputError(f"{p} is a directory")
    return p


def qml_path(path: str | os.PathLike[str]) -> Path:
    """The style file QGIS loads with a layer file: its name with ``.qml``."""
    return Path(path).with_suffix(".qml")


def check_qml(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Refuse, before any work, a ``.qml`` beside the layer that exists (unless ``overwrite``)."""
    target = qml_path(path)
    if target.exists() and not overwrite:
        raise OutputError(f"{target} already exists; pass `overwrite=True` to replace it")
    return target


def write_layer(
    gdf: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    overwrite: bool = False,
    classes: Sequence[str] | None = None,
    qml_file: bool = False,
    style_field: str = "class",
    colours: Sequence[str] | None = None,
) -> Path:
    """Write ``gdf`` to ``path`` atomically, in the format its extension names.

    A GeoPackage carries a default QGIS style (one outline colour per value
    of ``style_field``: ``classes``, or the layer's own values, in
    ``colours`` or :mod:`geovision.style`'s palette); ``qml_file`` also writes
    it as a ``.qml`` beside the layer, which QGIS loads with GeoJSON and
    Shapefiles.
    """
    p = check_output(path, overwrite)
    if qml_file:
        check_qml(p, overwrite)
    driver = DRIVERS[p.suffix.lower()]
    options: dict[str, str] = {}
    # GeoPackage 1.2, not GDAL's default 1.4: QGIS 3.22 (GDAL 3.6) warns on every 1.4 layer, and
    # nothing we write (plain features, no related tables or new extensions) needs 1.3 or 1.4
    dataset_options = {"VERSION": "1.2"} if driver == "GPKG" else None
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
                    tmp,
                    driver=driver,
                    engine="pyogrio",
                    layer=p.stem if driver == "GPKG" else None,
                    geometry_type=geometry_type,
                    layer_options=options or None,
                    dataset_options=dataset_options,
                )
        except Exception as e:  # noqa: BLE001 - GDAL write errors come in several types
            raise OutputError(f"{p}: could not write layer ({e})") from e
        if driver == "GPKG" or qml_file:  # the style is only made where it is written
            names = classes if classes is not None else sorted(set(gdf[style_field])) if style_field in gdf else []
            look = style.qml(names, style_field, colours)
        if driver == "GPKG":
            style.add_gpkg_style(tmp, p.stem, look)
        if qml_file:
            tmp.with_suffix(".qml").write_text(look, encoding="utf-8")
        if driver == "ESRI Shapefile":
            for part in SHAPEFILE_PARTS:
                src, dst = tmp.with_suffix(part), p.with_suffix(part)
                if src.exists():
                    os.replace(src, dst)
                elif dst.exists():  # a part this layer has not (no .prj without a CRS): no stale one left
                    dst.unlink()
        else:
            os.replace(tmp, p)
        if qml_file:
            os.replace(tmp.with_suffix(".qml"), qml_path(p))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return p


#: Tag of a mask or probability GeoTIFF naming its classes (a JSON list; class k is item k - 1).
CLASSES_TAG = "GEOVISION_CLASSES"


class RasterSink:
    """Writes segmentation strips as GeoTIFFs in the source raster's grid, strip by strip.

    ``mask`` gets the class raster (uint8, 0 = background), ``probs`` one
    float32 band per class. Model-grid strips are resampled to the source
    grid by nearest neighbour at pixel centres, so every source row is
    written exactly once. Each file is written tiled and compressed to a
    temporary file, turned into a Cloud Optimized GeoTIFF, and renamed into
    place only if the whole run succeeds.
    """

    def __init__(
        self,
        plan: ReadPlan,
        mask: str | os.PathLike[str] | None,
        probs: str | os.PathLike[str] | None,
        classes: tuple[str, ...],
        overwrite: bool = False,
    ) -> None:
        self.plan = plan
        self.targets = {k: Path(v) for k, v in (("mask", mask), ("probs", probs)) if v is not None}
        self.classes = classes
        self.n_classes = len(classes)
        self.overwrite = overwrite
        self.files: dict[str, rasterio.io.DatasetWriter] = {}
        self.tmp: dict[str, Path] = {}
        self.cols = np.minimum(((np.arange(plan.source_width) + 0.5) / plan.scale_x).astype(np.int64), plan.width - 1)

    def __enter__(self) -> RasterSink:
        p = self.plan
        base = dict(
            driver="GTiff",
            width=p.source_width,
            height=p.source_height,
            crs=p.crs,
            transform=p.source_transform,
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
            BIGTIFF="IF_SAFER",
        )
        layouts = {"mask": dict(count=1, dtype="uint8"), "probs": dict(count=self.n_classes, dtype="float32")}
        try:  # an interrupt while opening still removes what was opened: __exit__ would not run
            for key, target in self.targets.items():  # checked by the caller before the run
                self.tmp[key] = target.with_name(f".{target.name}.{os.getpid()}.tmp.tif")
                self.files[key] = f = rasterio.open(self.tmp[key], "w", **base, **layouts[key])
                # class k of the mask is classes[k - 1]; `geovision evaluate` reads the names back
                f.update_tags(**{CLASSES_TAG: json.dumps(list(self.classes))})
                if key == "probs":
                    f.descriptions = self.classes
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def write(self, strip: Strip) -> None:
        if not self.files:
            return
        p = self.plan
        first = int(np.ceil(strip.y0 * p.scale_y - 0.5))
        last_strip = strip.y0 + strip.rows >= p.height
        end = p.source_height if last_strip else int(np.ceil((strip.y0 + strip.rows) * p.scale_y - 0.5))
        first, end = max(first, 0), min(end, p.source_height)
        if end <= first:
            return
        rows = np.clip(((np.arange(first, end) + 0.5) / p.scale_y).astype(np.int64) - strip.y0, 0, strip.rows - 1)
        window = rasterio.windows.Window(0, first, p.source_width, end - first)
        if "mask" in self.files:
            self.files["mask"].write(strip.classes[rows][:, self.cols][None], window=window)
        if "probs" in self.files:
            self.files["probs"].write(strip.probs[1:, rows][:, :, self.cols], window=window)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            for f in self.files.values():
                f.close()
            if exc_type is None:
                for key, target in self.targets.items():
                    cog = self.tmp[key].with_suffix(".cog.tif")
                    rasterio.shutil.copy(self.tmp[key], cog, driver="COG", compress="DEFLATE")
                    os.replace(cog, target)
        finally:
            for tmp in self.tmp.values():
                for leftover in (tmp, tmp.with_suffix(".cog.tif")):
                    leftover.unlink(missing_ok=True)
