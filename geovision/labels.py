"""Reading training labels: vector layers in any CRS, Pascal VOC XML, DeepForest CSV.

Everything ends as boxes in the source raster's pixel coordinates, with a
report of what was dropped and why, so bad labels are counted, not lost.
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from geovision.errors import GeovisionError, LabelError, first_line

if TYPE_CHECKING:
    import geopandas as gpd


@dataclass
class ImageLabels:
    """Boxes for one image in its pixel coordinates (x1, y1, x2, y2) and class indexes."""

    image: Path
    boxes: np.ndarray
    classes: np.ndarray
    #: where the labels are complete, a polygon in the same coordinates; None: the whole image
    area: Any = None


@dataclass
class LabelReport:
    """Counts of labels used and dropped, by reason."""

    used: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] += n

    def summary(self) -> str:
        parts = [f"{self.used} labels used"]
        parts += [f"{n} dropped ({why})" for why, n in sorted(self.dropped.items())]
        return ", ".join(parts)


def read_pixel_labels(path: Path, image: Path, classes: Sequence[str], report: LabelReport) -> ImageLabels:
    """Pascal VOC XML or DeepForest-style CSV boxes for an image without georeference."""
    rows: list[tuple[str, float, float, float, float]] = []
    if path.suffix.lower() == ".xml":
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as e:
            raise LabelError(f"{path}: not a readable Pascal VOC file ({e})") from e
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            name = obj.findtext("name", "")
            if bb is None:
                report.drop("no bndbox")
                continue
            vals = [float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")]
            rows.append((name, *vals))  # type: ignore[arg-type]
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            for rec in csv.DictReader(f):
                if rec.get("image_path") and Path(rec["image_path"]).name != image.name:
                    continue
                rows.append(
                    (
                        rec.get("label", ""),
                        float(rec["xmin"]),
                        float(rec["ymin"]),
                        float(rec["xmax"]),
                        float(rec["ymax"]),
                    )
                )
    else:
        raise LabelError(f"{path}: pixel labels must be Pascal VOC .xml or DeepForest .csv")
    # Pascal VOC names of a one-class model ("Tree", "tree crown", typos) all are that class;
    # a CSV's label column is a class column: used when it holds the classes, refused when it holds others
    any_name = len(classes) == 1
    if path.suffix.lower() == ".csv":
        any_name = not uses_class_column("label", [r[0] for r in rows], classes, path)
    return _to_image_labels(image, rows, classes, report, any_name=any_name)


#: Columns read as class names when no --class-field is given.
CLASS_COLUMNS = ("class", "label")


def uses_class_column(column: str, values: Any, classes: Sequence[str], path: Path) -> bool:
    """Whether a ``class``/``label`` column, when no class field was named, gives each label's
    class (True) or everything is the one class asked for (False). A column holding several
    values is used when they are the classes asked for, and refused otherwise: relabelling cars
    and trees as 'tree' without a word is worse."""
    names = sorted({str(v) for v in values if v is not None and str(v) != "nan"})
    if len(names) <= 1:
        return len(classes) > 1
    known = {c.lower() for c in classes}
    if all(v.lower() in known for v in names):
        return True
    raise LabelError(
        f"{path}: column '{column}' holds {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}, not the "
        f"classes asked for ({', '.join(classes)}); pass `classes` with those names, or `class_field`"
    )


@dataclass
class ImageShapes:
    """Label geometries for one image in its pixel coordinates, and class indexes."""

    image: Path
    geoms: list[Any]
    classes: np.ndarray
    #: where the labels are complete, a polygon in the same coordinates; None: the whole image
    area: Any = None


def read_vector_shapes(
    path: Path,
    images: Sequence[Path],
    classes: Sequence[str],
    report: LabelReport,
    class_field: str | None = None,
) -> list[ImageShapes]:
    """A vector layer's features in each image's pixel coordinates (reprojected to its CRS).

    A feature that falls in no image is counted as dropped once, not per image.
    """
    import shapely

    gdf = read_vector(path, LabelError)
    if class_field and class_field not in gdf.columns:
        raise LabelError(f"{path}: no field {class_field!r}; fields are {', '.join(map(str, gdf.columns[:-1]))}")
    empty = gdf.geometry.isna() | gdf.geometry.is_empty
    report.drop("empty geometry", int(empty.sum()))
    gdf = gdf[~empty]
    column = next((c for c in CLASS_COLUMNS if c in gdf.columns), None)
    if not class_field and column and uses_class_column(column, gdf[column], classes, path):
        class_field = column
    if class_field:
        names = gdf[class_field].astype(str).tolist()
    else:
        names = [classes[0] if len(classes) == 1 else ""] * len(gdf)
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    seen = np.zeros(len(gdf), bool)
    out = []
    reprojected: dict[str, np.ndarray] = {}
    for image in images:
        pixel, (width, height) = _in_pixels(gdf, image, "vector labels need", reprojected)
        x1, y1, x2, y2 = shapely.bounds(pixel).T
        inside = (x2 > 0) & (y2 > 0) & (x1 < width) & (y1 < height)
        seen |= inside
        kept, cls = [], []
        for i in np.flatnonzero(inside):
            key = names[i].lower()
            if key not in lookup:
                report.drop(f"unknown class {names[i]!r}")
                continue
            kept.append(pixel[i])
            cls.append(lookup[key])
            report.used += 1
        out.append(ImageShapes(image, kept, np.asarray(cls, dtype=np.int64)))
    report.drop("outside every image", int((~seen).sum()))
    return out


#: tables QGIS (and geovision, for its default style) keep in a GeoPackage beside its layers
STYLE_TABLES = ("layer_styles",)


def feature_layer(path: str | os.PathLike[str]) -> str | None:
    """The layer to read from a vector file: GDAL's default (None), except in a GeoPackage that also
    holds QGIS's style table, where it is the first other layer (so reading it asks for no layer name)."""
    if Path(path).suffix.lower() != ".gpkg":
        return None
    import pyogrio

    names = [str(name) for name, _ in pyogrio.list_layers(path) if name not in STYLE_TABLES]
    return names[0] if names else None


def read_vector(
    path: str | os.PathLike[str], error: type[GeovisionError], role: str = "", fids: bool = False
) -> gpd.GeoDataFrame:
    """A vector layer (any format GDAL reads) with a CRS, or one line as ``error``: labels,
    truth and predictions are all read here. ``fids``: indexed by the file's feature ids."""
    import geopandas as gpd

    p = Path(path)
    where = f"{role} {p}" if role else str(p)
    if not p.exists():
        raise error(f"{where}: no such file")
    try:
        gdf = gpd.read_file(p, layer=feature_layer(p), fid_as_index=fids)
    except Exception as e:  # noqa: BLE001 - pyogrio raises several kinds
        raise error(f"{where}: not a readable vector layer ({first_line(e)})") from e
    if gdf.crs is None:
        raise error(f"{where}: layer has no CRS; set one in QGIS or with ogr2ogr -a_srs")
    return gdf


def read_vector_labels(
    path: Path,
    images: Sequence[Path],
    classes: Sequence[str],
    report: LabelReport,
    class_field: str | None = None,
) -> list[ImageLabels]:
    """Boxes (feature envelopes) of a vector layer in each image's pixel coordinates."""
    import shapely

    out = []
    for item in read_vector_shapes(path, images, classes, report, class_field):
        boxes = shapely.bounds(np.asarray(item.geoms, dtype=object)).reshape(-1, 4).astype(np.float32)
        out.append(ImageLabels(item.image, boxes, item.classes))
    return out


def read_areas(path: Path, images: Sequence[Path]) -> list[Any]:
    """For each image, the polygons of a vector layer (any CRS) that cover it, merged, in its pixel
    coordinates: the area where a user's labels are complete (OpenStreetMap mapped one district of
    an orthophoto). The layer is read once for all the images."""
    import shapely

    from geovision.geometry import polygonal

    gdf = read_vector(path, LabelError, "labelled area")
    out = []
    reprojected: dict[str, np.ndarray] = {}
    for image in images:
        pixel, (width, height) = _in_pixels(gdf, image, "a labelled area needs", reprojected)
        pixel = polygonal(shapely.make_valid(pixel))  # null geometries have dimension -1 and go below
        area = shapely.union_all(pixel[shapely.get_dimensions(pixel) == 2])
        area = shapely.intersection(area, shapely.box(0, 0, width, height))
        if area.is_empty or area.area == 0:
            raise LabelError(f"labelled area {path}: no polygon of it covers {image.name}")
        out.append(area)
    return out


def _in_pixels(
    gdf: gpd.GeoDataFrame, image: Path, needs: str, reprojected: dict[str, np.ndarray]
) -> tuple[np.ndarray, tuple[int, int]]:
    """A layer's geometries reprojected to ``image``'s CRS and mapped to its pixel coordinates, and
    the image's (width, height); ``needs`` begins the error for an image without georeference.
    ``reprojected`` keeps the layer in each CRS met, so that one large layer over a survey of many
    tiles in one CRS is reprojected once, not once per tile."""
    import shapely

    with rasterio.open(image) as ds:
        if ds.crs is None:
            raise LabelError(f"{image}: {needs} a georeferenced image")
        inv, size = ~ds.transform, (ds.width, ds.height)
        key = ds.crs.to_wkt()
        if key not in reprojected:
            reprojected[key] = gdf.to_crs(ds.crs).geometry.to_numpy()
        geoms = reprojected[key]
    return shapely.transform(geoms, lambda xy: np.column_stack(inv @ (xy[:, 0], xy[:, 1]))), size


def _to_image_labels(
    image: Path,
    rows: list[tuple[str, float, float, float, float]],
    classes: Sequence[str],
    report: LabelReport,
    any_name: bool = False,
) -> ImageLabels:
    """Rows of (class name, x1, y1, x2, y2) to an ImageLabels; ``any_name`` lets
    one-class pixel labels ("Tree", "tree crown") all count as that class."""
    boxes, cls = [], []
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    for name, x1, y1, x2, y2 in rows:
        key = name.lower()
        if any_name and len(classes) == 1:
            key = classes[0].lower()
        if key not in lookup:
            report.drop(f"unknown class {name!r}")
            continue
        if not all(np.isfinite([x1, y1, x2, y2])) or x2 <= x1 or y2 <= y1:
            report.drop("degenerate box")
            continue
        boxes.append((x1, y1, x2, y2))
        cls.append(lookup[key])
        report.used += 1
    return ImageLabels(
        image,
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(cls, dtype=np.int64),
    )
