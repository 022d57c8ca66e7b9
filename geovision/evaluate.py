"""Object-level evaluation of a predicted layer against a truth layer.

Both layers are brought to one projected CRS (the truth's, or its UTM zone
when the truth is in degrees). Predictions are matched one-to-one to truth
objects of the same class, greedily by score, when their IoU reaches the
threshold; candidate pairs come from an STRtree. From the matches:
precision, recall and F1 per class and overall (SpaceNet's polygon F1 at
IoU 0.5), and with scores, COCO-style average precision (101-point
interpolation) at 0.5 and averaged over IoU 0.50:0.95. With an ``area`` (where
the truth is complete), only objects inside it count on either side.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from geovision.errors import EvaluationError
from geovision.geometry import iou_pairs
from geovision.labels import read_vector

COCO_IOUS = np.round(np.arange(0.5, 0.96, 0.05), 2)


@dataclass
class Scores:
    """Counts and rates for one class (or all) at one IoU threshold."""

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap50: float | None = None
    ap: float | None = None

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> Scores:
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        return cls(tp, fp, fn, round(p, 4), round(r, 4), round(f1, 4))


@dataclass
class Evaluation:
    """Scores per class and overall, with what they were computed on."""

    iou: float
    crs: str
    per_class: dict[str, Scores]
    overall: Scores
    n_pred: int
    n_truth: int
    matches: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Per class, (recall, precision) after each prediction in score order, at ``iou``.
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    #: With several classes: objects matched regardless of class, counted by
    #: (truth class, predicted class); the extra row is unmatched predictions,
    #: the extra column unmatched truth. Labels are the classes, then "none".
    confusion: np.ndarray | None = field(default=None, repr=False)
    labels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "iou": self.iou,
            "crs": self.crs,
            "n_pred": self.n_pred,
            "n_truth": self.n_truth,
            "overall": asdict(self.overall),
            "per_class": {k: asdict(v) for k, v in self.per_class.items()},
        }
        if self.confusion is not None:
            out["confusion"] = {"labels": self.labels, "rows_truth_cols_pred": self.confusion.tolist()}
        return out


def _valid(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``gdf`` with invalid geometries repaired (OpenStreetMap footprints can self-intersect)."""
    bad = ~gdf.geometry.is_valid
    if bad.any():
        gdf = gdf.copy()
        gdf.loc[bad, gdf.geometry.name] = shapely.make_valid(gdf.geometry[bad].to_numpy())
    return gdf


def _names(values: Any) -> str:
    """Class names as a user reads them: ``all, tree``, not ``[np.str_('all'), ...]``."""
    return ", ".join(sorted({str(v) for v in values})) or "none"


def inside(gdf: gpd.GeoDataFrame, area: Any) -> gpd.GeoDataFrame:
    """The features of ``gdf`` whose inner point (on the feature, unlike a centroid) lies in ``area``."""
    points = shapely.point_on_surface(gdf.geometry.to_numpy())
    return gdf[shapely.contains_xy(area, shapely.get_x(points), shapely.get_y(points))]


def read_layer(path: str | os.PathLike[str], role: str, fids: bool = False) -> gpd.GeoDataFrame:
    """A predicted or truth layer, less its empty geometries; with ``fids``, indexed by the file's own
    feature ids (a GeoPackage's fid, as QGIS shows it)."""
    return drop_empty(read_vector(path, EvaluationError, role, fids))


def drop_empty(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``gdf`` less its features with no geometry or an empty one."""
    return gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]


def evaluate(
    pred: str | os.PathLike[str] | gpd.GeoDataFrame,
    truth: str | os.PathLike[str] | gpd.GeoDataFrame,
    iou: float = 0.5,
    class_field: str | None = "class",
    score_field: str | None = "score",
    boxes: bool = False,
    area: str | os.PathLike[str] | gpd.GeoDataFrame | None = None,
) -> Evaluation:
    """Compare ``pred`` with ``truth``; see the module docstring.

    ``class_field`` missing from a layer means one class for it; with
    ``boxes`` both layers are compared by their envelopes (as DeepForest
    reports box precision and recall). ``area``: polygons of where the truth
    is complete (OpenStreetMap mapped one district); objects whose inner
    point lies outside are left out of both layers.
    """
    p = pred if isinstance(pred, gpd.GeoDataFrame) else read_layer(pred, "predictions")
    t = truth if isinstance(truth, gpd.GeoDataFrame) else read_layer(truth, "truth")
    if len(t) == 0:
        raise EvaluationError("truth layer holds no features")
    crs = t.crs if t.crs.is_projected else t.estimate_utm_crs()
    p, t = _valid(p.to_crs(crs)), _valid(t.to_crs(crs))
    if area is not None:
        a = area if isinstance(area, gpd.GeoDataFrame) else read_layer(area, "area")
        where = shapely.union_all(_valid(a.to_crs(crs)).geometry.to_numpy())
        p, t = inside(p, where), inside(t, where)
        if len(t) == 0:
            raise EvaluationError("no truth feature lies inside the area")
    if len(p) and not shapely.box(*p.total_bounds).intersects(shapely.box(*t.total_bounds)):
        raise EvaluationError("predictions and truth do not overlap; are they of the same place (and CRS)?")
    p_cls = _classes(p, class_field)
    t_cls = _classes(t, class_field)
    if len(p) and not set(p_cls) & set(t_cls):
        raise EvaluationError(
            f"no class in common: predictions have {_names(p_cls)}, truth has {_names(t_cls)}; "
            "use `class_field` to name the field, or `class_field=None` to compare all as one class"
        )
    scores = p[score_field].to_numpy(float) if score_field and score_field in p.columns else np.ones(len(p))
    pg, tg = p.geometry.to_numpy(), t.geometry.to_numpy()
    if boxes:
        pg, tg = shapely.envelope(pg), shapely.envelope(tg)
    per_class: dict[str, Scores] = {}
    totals = np.zeros(3, int)
    has_scores = bool(score_field and score_field in p.columns)
    matches: dict[str, Any] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names = sorted(set(t_cls) | set(p_cls))
    for name in names:
        pi, ti = np.flatnonzero(p_cls == name), np.flatnonzero(t_cls == name)
        ious = pairwise_iou(pg[pi], tg[ti])
        order = np.argsort(-scores[pi], kind="stable")
        matched = match(ious, order, iou)
        tp = int((matched >= 0).sum())
        s = Scores.from_counts(tp, len(pi) - tp, len(ti) - tp)
        if has_scores:
            s.ap50 = round(average_precision(ious, scores[pi], len(ti), 0.5), 4)
            s.ap = round(float(np.mean([average_precision(ious, scores[pi], len(ti), th) for th in COCO_IOUS])), 4)
            curves[name] = precision_recall(matched[order] >= 0, len(ti))
        per_class[name] = s
        totals += (s.tp, s.fp, s.fn)
        matches[name] = (pi, ti, matched)
    overall = Scores.from_counts(*map(int, totals))
    if has_scores:
        overall.ap50 = round(float(np.mean([s.ap50 for s in per_class.values() if s.ap50 is not None])), 4)
        overall.ap = round(float(np.mean([s.ap for s in per_class.values() if s.ap is not None])), 4)
    confusion = None
    if len(names) > 1:
        confusion = confusion_matrix(pg, tg, p_cls, t_cls, scores, names, iou)
    return Evaluation(
        iou, crs.to_string(), per_class, overall, len(p), len(t), matches, curves, confusion, [*names, "none"]
    )


def confusion_matrix(
    pg: np.ndarray,
    tg: np.ndarray,
    p_cls: np.ndarray,
    t_cls: np.ndarray,
    scores: np.ndarray,
    names: list[str],
    iou: float,
) -> np.ndarray:
    """Objects matched one to one whatever their class, counted by (truth class, predicted class)."""
    index = {n: i for i, n in enumerate(names)}
    none = len(names)
    out = np.zeros((none + 1, none + 1), dtype=np.int64)
    matched = match(pairwise_iou(pg, tg), np.argsort(-scores, kind="stable"), iou)
    for k, j in enumerate(matched):
        out[index[t_cls[j]] if j >= 0 else none, index[p_cls[k]]] += 1
    for j in np.setdiff1d(np.arange(len(tg)), matched[matched >= 0]):
        out[index[t_cls[j]], none] += 1
    return out


def _classes(gdf: gpd.GeoDataFrame, field: str | None) -> np.ndarray:
    if field and field in gdf.columns:
        return gdf[field].astype(str).to_numpy()
    return np.full(len(gdf), "all", dtype=object).astype(str)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense (len(a), len(b)) IoU matrix, computed only for intersecting pairs (STRtree)."""
    out = np.zeros((len(a), len(b)))
    i, j, ious = iou_pairs(a, b)
    out[i, j] = ious
    return out


def match(ious: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy one-to-one matching on a dense IoU matrix; see :func:`match_pairs`."""
    i, j = np.nonzero(ious >= threshold)
    return match_pairs(i, j, ious[i, j], order, threshold, ious.shape[0])


def match_pairs(
    i: np.ndarray, j: np.ndarray, ious: np.ndarray, order: np.ndarray, threshold: float, n: int
) -> np.ndarray:
    """Greedy one-to-one matching: for each of the ``n`` predictions in ``order``, the free truth
    of highest IoU (the lowest index on a tie), if it reaches ``threshold``.

    The candidates are pairs (prediction ``i``, truth ``j``, their IoU), so that
    layers of many thousand objects need no dense matrix. This is the one
    matcher: ``evaluate``, ``quicklook`` and ``compare`` agree on what a match is.
    Returns, per prediction, the index of its truth object or -1.
    """
    matched = np.full(n, -1)
    rank = np.full(n, -1)
    rank[order] = np.arange(len(order))
    keep = (ious >= threshold) & (rank[i] >= 0)  # predictions not in ``order`` take no part
    i, j, ious = i[keep], j[keep], ious[keep]
    taken: set[int] = set()
    for k in np.lexsort((j, -ious, rank[i])):
        p, t = int(i[k]), int(j[k])
        if matched[p] < 0 and t not in taken:
            matched[p] = t
            taken.add(t)
    return matched


def pr_curve(ious: np.ndarray, scores: np.ndarray, n_truth: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each prediction, taken in decreasing score order."""
    order = np.argsort(-scores, kind="stable")
    return precision_recall(match(ious, order, threshold)[order] >= 0, n_truth)


def precision_recall(hits: np.ndarray, n_truth: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each prediction, from whether each (in score order) was a hit."""
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = tp / max(n_truth, 1)
    return recall, tp / np.maximum(tp + fp, 1)


def average_precision(ious: np.ndarray, scores: np.ndarray, n_truth: int, threshold: float) -> float:
    """COCO-style AP: precision made monotone, sampled at 101 recall points."""
    if n_truth == 0:
        return 0.0
    recall, precision = pr_curve(ious, scores, n_truth, threshold)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))
