"""Pixel metrics for segmentation: a class raster against vector or raster truth.

The predicted class raster (``detect --mask-out``: 0 background, k the k-th
class, names in its ``GEOVISION_CLASSES`` tag) is read in windows; vector
truth is brought to its CRS once and rasterised window by window, only the
features that touch the window, so memory stays bounded on any raster size.
Counts accumulate in one confusion matrix, from which IoU, F1, precision and
recall per class follow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import rasterio.windows
import shapely

from geovision.evaluate import EvaluationError, Scores, read_layer
from geovision.writers import CLASSES_TAG

#: Rows and columns of one window read at a time.
WINDOW = 2048


@dataclass
class PixelScores:
    """Pixel counts and rates of one class."""

    tp: int
    fp: int
    fn: int
    iou: float
    f1: float
    precision: float
    recall: float

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> PixelScores:
        s = Scores.from_counts(tp, fp, fn)  # precision, recall and F1 as for objects
        iou = round(tp / (tp + fp + fn), 4) if tp + fp + fn else 0.0
        return cls(tp, fp, fn, iou, s.f1, s.precision, s.recall)


@dataclass
class PixelEvaluation:
    """Scores per class and their mean, with the confusion matrix (rows truth, columns prediction,
    background first) they come from."""

    per_class: dict[str, PixelScores]
    mean: PixelScores
    confusion: np.ndarray = field(repr=False)
    labels: list[str] = field(default_factory=list)
    pixels: int = 0
    crs: str = ""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "crs": self.crs,
            "pixels": self.pixels,
            "mean": asdict(self.mean),
            "per_class": {k: asdict(v) for k, v in self.per_class.items()},
            "confusion": {"labels": self.labels, "rows_truth_cols_pred": self.confusion.tolist()},
        }


def evaluate_pixels(
    pred: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    class_field: str | None = "class",
    classes: list[str] | None = None,
) -> PixelEvaluation:
    """Compare the class raster ``pred`` with ``truth`` (a vector layer, or a class raster on the same grid)."""
    path = Path(pred)
    if not path.exists():
        raise EvaluationError(f"predictions {path}: no such file")
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise EvaluationError(f"predictions {path}: not a readable raster ({e})") from e
    with ds:
        names = classes or _class_names(ds)
        n = len(names) + 1
        counts = np.zeros(n * n, dtype=np.int64)
        for pred_block, truth_block, valid in _blocks(ds, Path(truth), names, class_field):
            if pred_block.max(initial=0) >= n:
                raise EvaluationError(
                    f"predictions {path.name}: class value {int(pred_block.max())} but only {n - 1} classes "
                    f"({', '.join(names)}); name them with `classes`"
                )
            idx = truth_block[valid].astype(np.int64) * n + pred_block[valid]
            counts += np.bincount(idx, minlength=n * n)
        crs = ds.crs.to_string() if ds.crs else ""
    confusion = counts.reshape(n, n)
    if confusion.sum() == 0:
        raise EvaluationError("predictions and truth share no valid pixel")
    per_class = {}
    for k, name in enumerate(names, start=1):
        tp = int(confusion[k, k])
        per_class[name] = PixelScores.from_counts(tp, int(confusion[:, k].sum()) - tp, int(confusion[k, :].sum()) - tp)
    mean = PixelScores(
        *(int(sum(getattr(s, f) for s in per_class.values())) for f in ("tp", "fp", "fn")),
        *(
            round(float(np.mean([getattr(s, f) for s in per_class.values()])), 4)
            for f in ("iou", "f1", "precision", "recall")
        ),
    )
    return PixelEvaluation(per_class, mean, confusion, ["background", *names], int(confusion.sum()), crs)


def _class_names(ds: rasterio.DatasetReader) -> list[str]:
    """Class names from the raster's tag, else 1..max of the first window's values."""
    tag = ds.tags().get(CLASSES_TAG)
    if tag:
        return [str(c) for c in json.loads(tag)]
    if ds.count != 1 or not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
        raise EvaluationError(f"predictions {Path(ds.name).name}: need a one-band integer class raster")
    return ["1"]


def _windows(ds: rasterio.DatasetReader) -> Iterator[rasterio.windows.Window]:
    for row in range(0, ds.height, WINDOW):
        for col in range(0, ds.width, WINDOW):
            yield rasterio.windows.Window(col, row, min(WINDOW, ds.width - col), min(WINDOW, ds.height - row))


def _blocks(
    ds: rasterio.DatasetReader, truth: Path, names: list[str], class_field: str | None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(prediction, truth, valid) arrays window by window."""
    if not truth.exists():
        raise EvaluationError(f"truth {truth}: no such file")
    try:
        truth_ds = rasterio.open(truth)
    except rasterio.errors.RasterioIOError:
        truth_ds = None
    if truth_ds is not None:
        with truth_ds:
            if (truth_ds.width, truth_ds.height, truth_ds.transform, truth_ds.crs) != (
                ds.width,
                ds.height,
                ds.transform,
                ds.crs,
            ):
                raise EvaluationError("truth raster and predictions are not on the same grid (size, transform, CRS)")
            for w in _windows(ds):
                p = ds.read(1, window=w)
                yield p, truth_ds.read(1, window=w), _valid(ds, w) & _valid(truth_ds, w)
        return
    shapes, tree = _truth_shapes(read_layer(truth, "truth"), ds, names, class_field)
    for w in _windows(ds):
        p = ds.read(1, window=w)
        transform = ds.window_transform(w)
        near = tree.query(shapely.box(*rasterio.windows.bounds(w, ds.transform)))
        t = np.zeros(p.shape, np.uint8)
        if len(near):
            t = rasterio.features.rasterize(
                ((shapes.geometry.iloc[i], shapes["value"].iloc[i]) for i in near),
                out_shape=p.shape,
                transform=transform,
                fill=0,
                dtype="uint8",
            )
        yield p, t, _valid(ds, w)


def _truth_shapes(
    gdf: gpd.GeoDataFrame, ds: rasterio.DatasetReader, names: list[str], class_field: str | None
) -> tuple[gpd.GeoDataFrame, shapely.STRtree]:
    """Truth polygons in the raster's CRS, each with its class value, and an index over them."""
    if len(gdf) == 0:
        raise EvaluationError("truth layer holds no features")
    if ds.crs is None:
        raise EvaluationError(f"predictions {Path(ds.name).name}: raster has no CRS to compare truth in")
    gdf = gdf.to_crs(ds.crs)
    if not shapely.box(*gdf.total_bounds).intersects(shapely.box(*ds.bounds)):
        raise EvaluationError("predictions and truth do not overlap; are they of the same place (and CRS)?")
    if class_field and class_field in gdf.columns:
        values = gdf[class_field].astype(str)
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise EvaluationError(
                f"truth classes {unknown} are not among the prediction's classes {names}; "
                "use `class_field=None` to compare all truth as the first class"
            )
        gdf = gdf.assign(value=values.map({n: i for i, n in enumerate(names, start=1)}).astype(np.uint8))
    else:
        gdf = gdf.assign(value=np.uint8(1))
    gdf = gdf[gdf.geom_type.isin(["Polygon", "MultiPolygon"])]
    return gdf, shapely.STRtree(gdf.geometry.to_numpy())


def _valid(ds: rasterio.DatasetReader, window: rasterio.windows.Window) -> np.ndarray:
    """Pixels with data (nodata and masked pixels are left out of the counts)."""
    return ds.read_masks(1, window=window) > 0
