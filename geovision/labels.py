"""Reading training labels: vector layers in any CRS, Pascal VOC XML, DeepForest CSV.

Everything ends as boxes in the source raster's pixel coordinates, with a
report of what was dropped and why, so bad labels are counted, not lost.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio

from geovision.errors import GeovisionError


class LabelError(GeovisionError, ValueError):
    """Labels cannot be read or do not fit the images."""


@dataclass
class ImageLabels:
    """Boxes for one image in its pixel coordinates (x1, y1, x2, y2) and class indexes."""

    image: Path
    boxes: np.ndarray
    classes: np.ndarray


@dataclass
class LabelReport:
    """Counts of labels used and dropped, by reason."""

    used: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        parts = [f"{self.used} labels used"]
        parts += [f"{n} dropped ({why})" for why, n in sorted(self.dropped.items())]
        return ", ".join(parts)


def read_pixel_labels(
    path: Path, image: Path, classes: Sequence[str], report: LabelReport
) -> ImageLabels:
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
                report.dropped["no bndbox"] += 1
                continue
            vals = [float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")]
            rows.append((name, *vals))  # type: ignore[arg-type]
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            for rec in csv.DictReader(f):
                if rec.get("image_path") and Path(rec["image_path"]).name != image.name:
                    continue
                rows.append(
                    (rec.get("label", ""), float(rec["xmin"]), float(rec["ymin"]), float(rec["xmax"]), float(rec["ymax"]))
                )
    else:
        raise LabelError(f"{path}: pixel labels must be Pascal VOC .xml or DeepForest .csv")
    return _to_image_labels(image, rows, classes, report)


def read_vector_labels(
    path: Path,
    image: Path,
    classes: Sequence[str],
    report: LabelReport,
    class_field: str | None = None,
) -> ImageLabels:
    """Envelopes of a vector layer's features, reprojected to ``image``'s CRS and pixels."""
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path)
    except Exception as e:  # noqa: BLE001 - pyogrio raises several kinds
        raise LabelError(f"{path}: not a readable vector layer ({e})") from e
    if gdf.crs is None:
        raise LabelError(f"{path}: labels have no CRS; set one in QGIS or with ogr2ogr -a_srs")
    with rasterio.open(image) as ds:
        if ds.crs is None:
            raise LabelError(f"{image}: vector labels need a georeferenced image")
        gdf = gdf.to_crs(ds.crs)
        inv = ~ds.transform
        width, height = ds.width, ds.height
    rows: list[tuple[str, float, float, float, float]] = []
    for i, geom in enumerate(gdf.geometry):
        if geom is None or geom.is_empty:
            report.dropped["empty geometry"] += 1
            continue
        name = str(gdf[class_field].iloc[i]) if class_field else (classes[0] if len(classes) == 1 else "")
        xs, ys = np.asarray(geom.envelope.exterior.coords).T if geom.envelope.geom_type == "Polygon" else (
            np.array([geom.x]), np.array([geom.y]))
        px, py = inv @ (xs, ys)
        x1, x2 = float(np.min(px)), float(np.max(px))
        y1, y2 = float(np.min(py)), float(np.max(py))
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            report.dropped["outside the image"] += 1
            continue
        rows.append((name, x1, y1, x2, y2))
    return _to_image_labels(image, rows, classes, report)


def _to_image_labels(
    image: Path, rows: list[tuple[str, float, float, float, float]], classes: Sequence[str], report: LabelReport
) -> ImageLabels:
    boxes, cls = [], []
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    for name, x1, y1, x2, y2 in rows:
        key = name.lower()
        if len(classes) == 1 and key not in lookup:
            key = classes[0].lower()  # one-class training takes any label name
        if key not in lookup:
            report.dropped[f"unknown class {name!r}"] += 1
            continue
        if not all(np.isfinite([x1, y1, x2, y2])) or x2 <= x1 or y2 <= y1:
            report.dropped["degenerate box"] += 1
            continue
        boxes.append((x1, y1, x2, y2))
        cls.append(lookup[key])
        report.used += 1
    return ImageLabels(
        image,
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(cls, dtype=np.int64),
    )
