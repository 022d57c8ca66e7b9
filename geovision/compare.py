"""What changed between two surveys of one place, object by object.

Two layers of objects (or two rasters, detected first) are brought into one
projected CRS (AFTER's, or its UTM zone when AFTER is in degrees). Two
orthomosaics of one place are often a metre or more apart, which would make
every object look changed, so the shift between them is estimated from the
objects themselves and applied to BEFORE first:

1. every pair of objects of one class whose centres lie within ``max_shift``
   votes for its offset; the peak of the votes (smoothed, and weighed
   gently towards no shift, so that the rows of an orchard do not outvote
   the true offset) is a first estimate;
2. then, until it settles: BEFORE is moved by the estimate, matched one to
   one with AFTER, and the estimate becomes the median centre offset of the
   confident matches (IoU 0.5 or more).

Objects are then matched one to one by IoU with :func:`geovision.evaluate.match_pairs`
(the matcher ``evaluate`` scores with, AFTER in the role of predictions).
Each object gets a ``change``: ``kept``, ``grown`` or ``shrunk`` (matched,
area changed by more than ``area_change``), ``gone`` (BEFORE only) or
``new`` (AFTER only). Gone objects are drawn where they lie once aligned,
in AFTER's frame, so that the layer sits on the AFTER imagery.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geovision.config import ModelConfig
from geovision.detect import detect
from geovision.errors import EvaluationError
from geovision.evaluate import _valid, drop_empty, match_pairs, read_layer
from geovision.geometry import iou_pairs
from geovision.quicklook import draw
from geovision.raster import is_raster_path
from geovision.registry import resolve_model
from geovision.writers import check_output, check_qml, write_layer

#: the changes, in the order the summary and the style list them
CHANGES = ("kept", "grown", "shrunk", "gone", "new")
#: their outline colours (R,G,B): unchanged quiet, losses red, gains green
CHANGE_COLOURS = {
    "kept": (190, 190, 190),
    "grown": (0, 220, 255),
    "shrunk": (255, 150, 0),
    "gone": (255, 40, 40),
    "new": (0, 230, 64),
}
#: the fields of a change layer, in this order (then the geometry)
CHANGE_COLUMNS = (
    "change",
    "class",
    "class_id",
    "score",
    "area_m2",
    "before_id",
    "after_id",
    "before_m2",
    "after_m2",
    "iou",
    "source",
)
#: matches at this IoU or more are trusted to measure the shift
CONFIDENT_IOU = 0.5
#: fewest confident matches that make a shift estimate
MIN_MATCHES = 5
VOTE_BIN_M = 0.25


@dataclass(frozen=True)
class Shift:
    """How far BEFORE was moved onto AFTER, in metres east and north, and how it was found."""

    dx: float
    dy: float
    how: str  # "estimated", "given" or "none"
    matches: int = 0  # confident matches it was estimated from

    def describe(self) -> str:
        moved = f"BEFORE moved by ({self.dx:+.2f} m, {self.dy:+.2f} m)"
        if self.how == "estimated":
            return f"{moved}, estimated from {self.matches} matched objects"
        return f"{moved}, as given" if self.how == "given" else "not aligned (`align=False`)"


@dataclass
class Comparison:
    """Every object of both surveys with its change, in AFTER's CRS, and the shift used."""

    changes: gpd.GeoDataFrame
    shift: Shift
    crs: str  # the projected CRS the objects were compared in
    n_before: int
    n_after: int
    output: Path | None = None

    def counts(self) -> dict[str, Counter[str]]:
        """Objects by change, then by class."""
        out: dict[str, Counter[str]] = {c: Counter() for c in CHANGES}
        for change, cls in zip(self.changes["change"], self.changes["class"], strict=True):
            out[str(change)][str(cls)] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "shift": {"dx_m": round(self.shift.dx, 3), "dy_m": round(self.shift.dy, 3), "how": self.shift.how},
            "shift_matches": self.shift.matches,
            "crs": self.crs,
            "n_before": self.n_before,
            "n_after": self.n_after,
            "changes": {k: dict(v) for k, v in self.counts().items()},
        }


def compare_layers(
    before: str | os.PathLike[str] | gpd.GeoDataFrame,
    after: str | os.PathLike[str] | gpd.GeoDataFrame,
    *,
    iou: float = 0.5,
    area_change: float = 0.25,
    class_field: str | None = "class",
    align: bool = True,
    shift: tuple[float, float] | None = None,
    max_shift: float = 10.0,
) -> Comparison:
    """Compare two layers of objects; see the module docstring.

    ``iou``: the overlap that makes two objects one, ``evaluate``'s 0.5 by
    default (so the two agree on what a match is); at 0.5 an object can grow
    to twice its area and still be ``grown``, and 0.3 lets it triple.
    ``shift`` (metres east, north) is applied to BEFORE instead of an estimate;
    ``align=False`` applies none. ``class_field`` missing from either layer
    compares all objects as one class.
    """
    b = _read(before, "BEFORE")
    a = _read(after, "AFTER")
    crs_names, after_crs = (b.crs.to_string(), a.crs.to_string()), a.crs
    crs = a.crs if a.crs.is_projected else a.estimate_utm_crs()
    metre = float(crs.axis_info[0].unit_conversion_factor)  # CRS units in metres (1, or 0.3048 for feet)
    b, a = _valid(b.to_crs(crs)), _valid(a.to_crs(crs))
    if len(b) and len(a) and not _boxes_meet(b, a, max_shift / metre):
        raise EvaluationError(
            f"BEFORE and AFTER do not overlap (BEFORE is in {crs_names[0]}, AFTER in {crs_names[1]}); "
            "are they of the same place, and is each layer's CRS right?"
        )
    use_classes = bool(class_field) and class_field in b.columns and class_field in a.columns
    b_cls = b[class_field].astype(str).to_numpy() if use_classes else np.full(len(b), "all", dtype=object)
    a_cls = a[class_field].astype(str).to_numpy() if use_classes else np.full(len(a), "all", dtype=object)
    if use_classes and len(b) and len(a) and not set(b_cls) & set(a_cls):
        raise EvaluationError(
            f"no class in common: BEFORE has {', '.join(sorted(set(b_cls)))}, AFTER has "
            f"{', '.join(sorted(set(a_cls)))}; name the class field, or give none to compare all as one class"
        )
    bg, ag = b.geometry.to_numpy(), a.geometry.to_numpy()
    if shift is not None:
        used = Shift(float(shift[0]), float(shift[1]), "given")
    elif not align:
        used = Shift(0.0, 0.0, "none")
    else:
        for name, layer in (("BEFORE", b), ("AFTER", a)):
            if len(layer) == 0:
                raise EvaluationError(f"{name} holds no objects: nothing to estimate the shift from (or `align=False`)")
        dx, dy, n = estimate_shift(bg, ag, b_cls, a_cls, max_shift / metre)
        used = Shift(dx * metre, dy * metre, "estimated", n)
    bg = shapely.transform(bg, lambda xy: xy + np.array([used.dx, used.dy]) / metre)
    matched, ious = _match(bg, ag, b_cls, a_cls, _scores(a), iou)
    names = _name(before, "BEFORE"), _name(after, "AFTER")
    layer = _change_layer(b, a, bg, b_cls, a_cls, matched, ious, area_change, metre, names)
    return Comparison(layer.to_crs(after_crs), used, crs.to_string(), len(b), len(a))


def _read(layer: str | os.PathLike[str] | gpd.GeoDataFrame, role: str) -> gpd.GeoDataFrame:
    """A layer with its own feature ids as the index (a GeoPackage's fid, as QGIS shows it)."""
    if not isinstance(layer, gpd.GeoDataFrame):
        return read_layer(layer, role, fids=True)
    if layer.crs is None:
        raise EvaluationError(f"{role} layer has no CRS")
    if not pd.api.types.is_integer_dtype(layer.index):
        layer = layer.reset_index(drop=True)
    return drop_empty(layer)


def _boxes_meet(b: gpd.GeoDataFrame, a: gpd.GeoDataFrame, margin: float) -> bool:
    return bool(shapely.box(*b.total_bounds).buffer(margin).intersects(shapely.box(*a.total_bounds)))


def _scores(gdf: gpd.GeoDataFrame) -> np.ndarray:
    return gdf["score"].to_numpy(float) if "score" in gdf.columns else np.ones(len(gdf))


def _match(
    bg: np.ndarray, ag: np.ndarray, b_cls: np.ndarray, a_cls: np.ndarray, a_scores: np.ndarray, iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per AFTER object, its BEFORE partner (or -1) and their IoU, class by class, AFTER's best scores first."""
    matched = np.full(len(ag), -1)
    ious = np.zeros(len(ag))
    for name in sorted(set(a_cls) & set(b_cls)):
        ai, bi = np.flatnonzero(a_cls == name), np.flatnonzero(b_cls == name)
        i, j, v = iou_pairs(ag[ai], bg[bi])
        m = match_pairs(i, j, v, np.argsort(-a_scores[ai], kind="stable"), iou, len(ai))
        hit = m >= 0
        matched[ai[hit]] = bi[m[hit]]
        pair_iou = dict(zip(zip(i.tolist(), j.tolist(), strict=True), v.tolist(), strict=True))
        ious[ai[hit]] = [pair_iou[(k, int(m[k]))] for k in np.flatnonzero(hit)]
    return matched, ious


def estimate_shift(
    bg: np.ndarray, ag: np.ndarray, b_cls: np.ndarray, a_cls: np.ndarray, max_shift: float
) -> tuple[float, float, int]:
    """The offset (dx, dy) that moves BEFORE's objects onto AFTER's, and the confident matches
    it rests on; see the module docstring. One line if there are too few to tell."""
    bc = shapely.get_coordinates(shapely.centroid(bg))
    ac = shapely.get_coordinates(shapely.centroid(ag))
    j, i = shapely.STRtree(shapely.points(bc)).query(shapely.points(ac), predicate="dwithin", distance=max_shift)
    same = b_cls[i] == a_cls[j]
    offsets = ac[j[same]] - bc[i[same]]
    if len(offsets) < MIN_MATCHES:
        raise EvaluationError(
            f"too few objects near each other to estimate the shift ({len(offsets)} pairs within {max_shift:g} "
            "of each other); give `shift=(dx, dy)` or `align=False`"
        )
    estimate = _vote(offsets, max_shift)
    n = 0
    for _ in range(10):
        moved = shapely.transform(bg, lambda xy, d=estimate: xy + d)
        matched, ious = _match(moved, ag, b_cls, a_cls, np.ones(len(ag)), CONFIDENT_IOU)
        confident = np.flatnonzero(matched >= 0)
        n = len(confident)
        if n < MIN_MATCHES:
            raise EvaluationError(
                f"too few objects match to estimate the shift ({n} at IoU {CONFIDENT_IOU} once moved by "
                f"({estimate[0]:+.2f}, {estimate[1]:+.2f})); give `shift=(dx, dy)` or `align=False`"
            )
        new = np.median(ac[confident] - bc[matched[confident]], axis=0)
        settled = bool(np.hypot(*(new - estimate)) < 0.005)
        estimate = new
        if settled:
            break
    return float(estimate[0]), float(estimate[1]), n


def _vote(offsets: np.ndarray, max_shift: float) -> np.ndarray:
    """The peak of the offsets' smoothed 2-D histogram, weighed towards no shift, refined by the
    median of the offsets near it."""
    from scipy import ndimage

    bins = max(3, int(np.ceil(2 * max_shift / VOTE_BIN_M)))
    edges = np.linspace(-max_shift, max_shift, bins + 1)
    votes, _, _ = np.histogram2d(offsets[:, 0], offsets[:, 1], bins=(edges, edges))
    votes = ndimage.uniform_filter(votes, size=3, mode="constant")
    centres = (edges[:-1] + edges[1:]) / 2
    r2 = centres[:, None] ** 2 + centres[None, :] ** 2
    votes *= np.exp(-r2 / (2 * (max_shift / 2) ** 2))
    x, y = np.unravel_index(int(votes.argmax()), votes.shape)
    peak = np.array([centres[x], centres[y]])
    near = np.hypot(*(offsets - peak).T) <= 2 * VOTE_BIN_M
    return np.median(offsets[near], axis=0) if near.any() else peak


def _change_layer(
    b: gpd.GeoDataFrame,
    a: gpd.GeoDataFrame,
    moved: np.ndarray,
    b_cls: np.ndarray,
    a_cls: np.ndarray,
    matched: np.ndarray,
    ious: np.ndarray,
    area_change: float,
    metre: float,
    names: tuple[str, str],
) -> gpd.GeoDataFrame:
    """One row per AFTER object and per gone BEFORE object, in the compared CRS."""
    area_b = shapely.area(moved) * metre**2
    area_a = shapely.area(a.geometry.to_numpy()) * metre**2
    hit = matched >= 0
    partner_area = np.where(hit, area_b[np.maximum(matched, 0)], np.nan)
    ratio = np.divide(area_a, partner_area, out=np.ones_like(area_a), where=hit & (partner_area > 0))
    change = np.where(
        ~hit, "new", np.where(ratio > 1 + area_change, "grown", np.where(ratio < 1 - area_change, "shrunk", "kept"))
    )
    gone = np.setdiff1d(np.arange(len(b)), matched[hit])
    b_ids, a_ids = b.index.to_numpy(), a.index.to_numpy()
    source_b, source_a = (
        gdf["source"].astype(str).to_numpy() if "source" in gdf.columns else np.full(len(gdf), name, dtype=object)
        for gdf, name in ((b, names[0]), (a, names[1]))
    )
    rows = {
        "change": np.concatenate([change, np.full(len(gone), "gone")]).astype(object),
        "class": np.concatenate([a_cls, b_cls[gone]]).astype(object),
        "class_id": pd.array(np.concatenate([_optional(a, "class_id"), _optional(b, "class_id")[gone]]), dtype="Int64"),
        "score": np.concatenate([_optional(a, "score"), _optional(b, "score")[gone]]),
        "area_m2": np.round(np.concatenate([area_a, area_b[gone]]), 3),
        "before_id": pd.array([*(b_ids[m] if m >= 0 else None for m in matched), *b_ids[gone]], dtype="Int64"),
        "after_id": pd.array([*a_ids, *([None] * len(gone))], dtype="Int64"),
        "before_m2": np.round(np.concatenate([partner_area, area_b[gone]]), 3),
        "after_m2": np.round(np.concatenate([area_a, np.full(len(gone), np.nan)]), 3),
        "iou": np.round(np.concatenate([np.where(hit, ious, np.nan), np.full(len(gone), np.nan)]), 4),
        "source": np.concatenate([source_a, source_b[gone]]).astype(object),
    }
    geometry = np.concatenate([a.geometry.to_numpy(), moved[gone]])
    return gpd.GeoDataFrame(rows, geometry=gpd.GeoSeries(geometry, crs=a.crs), crs=a.crs)


def _optional(gdf: gpd.GeoDataFrame, column: str) -> np.ndarray:
    """A numeric column of ``gdf``, or NaN where it has none."""
    return gdf[column].to_numpy(float) if column in gdf.columns else np.full(len(gdf), np.nan)


def _name(source: object, role: str = "") -> str:
    """A layer's name for the ``source`` field: its file name."""
    return Path(source).name if isinstance(source, (str, os.PathLike)) else role


def compare(
    before: str | os.PathLike[str] | gpd.GeoDataFrame,
    after: str | os.PathLike[str] | gpd.GeoDataFrame,
    output: str | os.PathLike[str] | None = None,
    *,
    model: str | os.PathLike[str] | ModelConfig | None = None,
    confidence: float | None = None,
    device: str | None = None,
    iou: float = 0.5,
    area_change: float = 0.25,
    class_field: str | None = "class",
    align: bool = True,
    shift: tuple[float, float] | None = None,
    max_shift: float = 10.0,
    quicklook: str | os.PathLike[str] | None = None,
    qml: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Compare two surveys and optionally write the change layer to ``output``.

    BEFORE and AFTER are vector layers of objects, or two rasters with a
    ``model`` (their objects are detected first: ``confidence`` and ``device``
    as for :func:`geovision.detect`, ``progress`` called with (tiles done,
    tiles in all) over both). The layer is written in AFTER's CRS (GeoJSON:
    EPSG:4326), styled by ``change`` in a GeoPackage (and in a ``.qml``
    beside any layer with ``qml``). ``quicklook`` names a
    PNG of the AFTER raster with gone, new and changed objects drawn over it.
    Other options: :func:`compare_layers`. Outputs are checked before any work
    and written whole or not at all.
    """
    layers: list[Any] = [before, after]
    rasters = [isinstance(x, (str, os.PathLike)) and is_raster_path(x) for x in layers]
    if model is None and any(rasters):
        raster = layers[rasters.index(True)]
        raise EvaluationError(f"{raster} is a raster: give a model to detect its objects first")
    if model is not None and not all(rasters):
        raise EvaluationError("a model detects the objects of two rasters: give BEFORE and AFTER as rasters")
    if quicklook is not None and model is None:
        raise EvaluationError("the quicklook is drawn over the AFTER raster: give two rasters and a model")
    out = check_output(output, overwrite) if output is not None else None
    if out is not None and qml:
        check_qml(out, overwrite)
    look = check_output(quicklook, overwrite, suffixes=(".png",)) if quicklook is not None else None
    if model is not None:
        cfg = model if isinstance(model, ModelConfig) else resolve_model(model)
        layers = [_detect(r, cfg, confidence, device, progress, k) for k, r in enumerate((before, after))]
    result = compare_layers(
        layers[0],
        layers[1],
        iou=iou,
        area_change=area_change,
        class_field=class_field,
        align=align,
        shift=shift,
        max_shift=max_shift,
    )
    if out is not None:
        colours = [",".join(map(str, CHANGE_COLOURS[c])) for c in CHANGES]
        write_layer(result.changes, out, overwrite, CHANGES, qml, style_field="change", colours=colours)
        result.output = out
    if look is not None:
        changes = result.changes
        shown = {c: (changes[changes["change"] == c], CHANGE_COLOURS[c]) for c in CHANGES}
        draw(after, look, shown, overwrite=overwrite)  # type: ignore[arg-type]
    return result


def _detect(
    raster: Any,
    model: ModelConfig,
    confidence: float | None,
    device: str | None,
    progress: Callable[[int, int], None] | None,
    k: int,
) -> gpd.GeoDataFrame:
    """The objects ``model`` finds in ``raster``, the ``k``-th of two (progress counts both as halves)."""

    def halves(done: int, total: int) -> None:
        if progress is not None:
            progress(k * total + done, 2 * total)

    return detect(raster, model, device=device, confidence=confidence, progress=halves).features
