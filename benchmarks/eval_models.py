"""Score models on imagery they never trained on: leave one site out.

    python benchmarks/eval_models.py configs/training/trees.yaml --work runs/trees-loso
    python benchmarks/eval_models.py configs/training/buildings-base.yaml --work runs/buildings-loso \\
        --sites kampala+rio-b
    python benchmarks/eval_models.py configs/training/buildings.yaml --work runs/buildings-2 \\
        --start runs/buildings-loso --sites kampala+rio-b     # a second stage, from each fold's first

For each site of the training config (its ``datasets``), a model is trained
with ``geovision train`` on every other site, then ``geovision detect`` runs
it on the held-out site's images at a low confidence. The detections are
scored against the site's labels over a sweep of confidence thresholds:
boxes at IoU 0.4 and 0.5 for detectors (DeepForest reports 0.4), polygons
at IoU 0.5 for segmenters (SpaceNet's metric). The threshold with the best
pooled F1 over all held-out sites is the one to ship in the final model's
YAML. ``--tta``, ``--set FIELD=VALUE`` (a model setting such as ``iou``
or ``resolution_m``) and ``--scales`` (a detector read at several
resolutions, boxes pooled by NMS) score the same fold models run otherwise. Runs are
resumable: a fold whose model and detections exist is not redone. Prints
Markdown tables and writes ``results.json`` in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
import yaml

import geovision
from geovision.config import VectorizeOptions
from geovision.evaluate import Scores, evaluate, inside, read_layer
from geovision.geometry import batched_nms
from geovision.labels import LabelReport, read_pixel_labels
from geovision.raster import open_raster
from geovision.training import TrainSpec, load_train_config, spec_from_mapping, train, without_sites
from geovision.training.spec import per_image

#: A metric CRS for images without georeference (their boxes are in pixels times the pixel size).
STAND_IN = "EPSG:32631"
THRESHOLDS = np.round(np.arange(0.05, 0.71, 0.05), 2)
SEG_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
LOW_CONF = 0.03


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn

    def prf(self) -> tuple[float, float, float]:
        s = Scores.from_counts(self.tp, self.fp, self.fn)
        return s.precision, s.recall, s.f1


@dataclass
class SiteResult:
    site: str
    images: int
    truth: int
    seconds_detect: float
    megapixels: float
    #: metric name -> threshold -> counts
    counts: dict[str, dict[float, Counts]] = field(default_factory=dict)


def truth_layer(spec: TrainSpec, image: Path, labels: Path) -> gpd.GeoDataFrame:
    """The labels of one image in the coordinates ``detect`` writes for it."""
    if labels.suffix.lower() in {".xml", ".csv"}:
        item = read_pixel_labels(labels, image, spec.classes, LabelReport())
        with open_raster(image) as ds:
            crs, t = ds.crs, ds.transform
        geoms = [shapely.box(*b) for b in item.boxes]
        if crs is not None:
            geoms = [shapely.transform(g, lambda xy: np.column_stack(t @ (xy[:, 0], xy[:, 1]))) for g in geoms]
        else:  # detect's pixel coordinates, scaled to metres for a metric stand-in CRS
            s = spec.image_resolution or 1.0
            geoms = [shapely.affinity.scale(g, s, s, origin=(0, 0)) for g in geoms]
            crs = STAND_IN
        return gpd.GeoDataFrame({"class": [spec.classes[c] for c in item.classes]}, geometry=geoms, crs=crs)
    gdf = gpd.read_file(labels)
    gdf["class"] = gdf[spec.class_field].astype(str) if spec.class_field else spec.classes[0]
    with open_raster(image) as ds:
        gdf = gdf.to_crs(ds.crs)
        gdf = gdf[gdf.intersects(shapely.box(*ds.bounds))]
        # only objects on imagery count: mosaics are mostly no data, and OSM maps beyond them
        mask = ds.dataset_mask()
        centres = gdf.geometry.representative_point()
        rows, cols = rasterio.transform.rowcol(ds.transform, centres.x.to_numpy(), centres.y.to_numpy())
        rows = np.clip(np.asarray(rows), 0, ds.height - 1)
        cols = np.clip(np.asarray(cols), 0, ds.width - 1)
        return gdf[mask[rows, cols] > 0]


def predict(
    model: geovision.ModelConfig, spec: TrainSpec, image: Path, tta: bool = False
) -> tuple[gpd.GeoDataFrame, float, float]:
    """Detections at the model's confidence, seconds, megapixels read."""
    with open_raster(image) as ds:
        georef = ds.crs is not None
        mp = ds.width * ds.height / 1e6
    t0 = time.perf_counter()
    result = geovision.detect(
        image,
        model,
        pixel_coords=not georef,
        pixel_size=None if georef else spec.image_resolution,
        tta=tta,
    )
    seconds = time.perf_counter() - t0
    gdf = result.features
    if not georef:
        s = spec.image_resolution or 1.0
        gdf = gdf.set_geometry(gdf.geometry.scale(s, s, origin=(0, 0))).set_crs(STAND_IN, allow_override=True)
    return gdf, seconds, mp


def metrics_for(task: str) -> list[tuple[str, float, bool]]:
    """(name, IoU, compare boxes) for a task."""
    if task == "detect":
        return [("box IoU 0.4", 0.4, True), ("box IoU 0.5", 0.5, True)]
    return [("polygon IoU 0.5", 0.5, False)]


def score(pred: gpd.GeoDataFrame, truth: gpd.GeoDataFrame, iou: float, boxes: bool) -> Counts:
    if len(truth) == 0:
        return Counts(0, len(pred), 0)
    if len(pred) == 0:
        return Counts(0, 0, len(truth))
    if not shapely.box(*pred.total_bounds).intersects(shapely.box(*truth.total_bounds)):
        return Counts(0, len(pred), len(truth))  # a few detections off to one side of the labels
    o = evaluate(pred, truth, iou=iou, class_field=None, boxes=boxes).overall
    return Counts(o.tp, o.fp, o.fn)


def by_score(task: str) -> bool:
    """Whether objects carry their own score (detectors, instance segmenters): one run at a low
    threshold is then filtered for each threshold of the sweep."""
    return task in ("detect", "instance")


def thresholds_for(task: str) -> list[float]:
    """Confidence thresholds swept: objects' scores, or for segmenters the per-pixel probability,
    where each threshold is its own run."""
    return [float(t) for t in (THRESHOLDS if by_score(task) else SEG_THRESHOLDS)]


def cached_predict(
    model: geovision.ModelConfig, spec: TrainSpec, image: Path, cache: Path, confidence: float, tta: bool = False
) -> tuple[gpd.GeoDataFrame, dict[str, float]]:
    """Detections of ``image`` at ``confidence``, from ``cache`` when there."""
    if cache.exists():
        return gpd.read_file(cache), json.loads(cache.with_suffix(".json").read_text())
    pred, seconds, mp = predict(model.with_overrides(confidence=confidence), spec, image, tta)
    info = {"seconds": seconds, "megapixels": mp}
    pred.to_file(cache)
    cache.with_suffix(".json").write_text(json.dumps(info))
    return pred, info


def union_predict(
    model: geovision.ModelConfig,
    spec: TrainSpec,
    image: Path,
    work: Path,
    name: str,
    confidence: float,
    scales: Sequence[float],
) -> tuple[gpd.GeoDataFrame, dict[str, float]]:
    """A detector's boxes read at each of ``scales`` (m/px), pooled and deduplicated by box NMS at the
    model's IoU: a multi-scale test-time augmentation, scored without changing ``detect``."""
    parts, seconds = [], 0.0
    for r in scales:
        cache = work / f"res{r:g}" / name
        cache.parent.mkdir(parents=True, exist_ok=True)
        pred, info = cached_predict(model.with_overrides(resolution_m=r), spec, image, cache, confidence)
        parts.append(pred)
        seconds += info["seconds"]
    info = {"seconds": seconds, "megapixels": info["megapixels"]}  # the image's pixels, read once per scale
    pooled = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=parts[0].crs)
    keep = batched_nms(pooled.geometry.bounds.to_numpy(), pooled["score"].to_numpy(), pooled["class_id"], model.iou)
    return pooled.iloc[np.sort(keep)], info


def score_site(
    site: str,
    model: geovision.ModelConfig,
    spec: TrainSpec,
    work: Path,
    metrics: list[tuple[str, float, bool]],
    tta: bool = False,
    scales: Sequence[float] = (),
) -> SiteResult:
    """Run ``model`` on ``site``'s images (detections cached in ``work``) and count matches per threshold;
    with ``scales``, the union of its runs at those reading resolutions (see :func:`union_predict`)."""
    idx = [i for i, s in enumerate(spec.sites or ()) if s == site]
    labels = per_image(spec.labels, len(spec.images))
    areas = per_image(spec.areas, len(spec.images)) if spec.areas else None
    sweep = thresholds_for(spec.task)
    res = SiteResult(site, len(idx), 0, 0.0, 0.0, {m: {t: Counts() for t in sweep} for m, _, _ in metrics})
    for i in idx:
        image = spec.images[i]
        truth = truth_layer(spec, image, labels[i])
        area = read_layer(areas[i], "area").to_crs(truth.crs).union_all() if areas and areas[i] else None
        area_crs = truth.crs
        if area is not None:  # the labels are complete there only: objects outside count on neither side
            truth = inside(truth, area)
        res.truth += len(truth)
        runs = [LOW_CONF] if by_score(spec.task) else sweep
        for k, run_t in enumerate(runs):
            name = f"{i:03d}_{image.stem}_{run_t:.2f}.gpkg"
            if scales:
                pred, info = union_predict(model, spec, image, work, name, run_t, scales)
            else:
                pred, info = cached_predict(model, spec, image, work / name, run_t, tta)
            if k == 0:  # speed from the first run
                res.seconds_detect += info["seconds"]
                res.megapixels += info["megapixels"]
            if truth.crs is not None and pred.crs is not None and truth.crs != pred.crs:
                truth = truth.to_crs(pred.crs)
            if area is not None:
                pred = pred.loc[inside(pred.to_crs(area_crs), area).index]
            for t in sweep if by_score(spec.task) else [run_t]:
                kept = pred[pred["score"] >= t] if by_score(spec.task) else pred
                for name, iou, boxes in metrics:
                    res.counts[name][t].add(score(kept, truth, iou, boxes))
    return res


def sites_seen_by(weights: Path | None) -> set[str]:
    """The sites a package's weights trained on, from the model.yaml beside them (none if unknown)."""
    record = weights.parent / "model.yaml" if weights is not None else None
    if record is None or not record.is_file():
        return set()
    data = yaml.safe_load(record.read_text()) or {}
    return set(data.get("training", {}).get("data", {}).get("sites") or ())


def fold(
    spec: TrainSpec, held: list[str], work: Path, epochs: int | None, start: Path | None = None
) -> geovision.ModelConfig:
    """The model trained without the ``held`` sites (trained now unless ``work`` already holds it).

    With ``start``, a folder of earlier fold models, training starts from the
    same fold's weights there (the config's own start would have seen the
    held-out sites).
    """
    site = "+".join(held)
    out = work / site / "model"
    if (out / "model.yaml").exists():
        return geovision.resolve_model(out / "model.yaml")
    fold_spec = without_sites(spec, held, out)
    if start is not None:
        weights = start / site / "model" / "weights.pt"
        if not weights.is_file():
            raise SystemExit(f"--start {start}: no fold model {weights}")
        fold_spec = replace(fold_spec, weights=weights)
    elif seen := sorted(set(held) & sites_seen_by(fold_spec.weights)):
        raise SystemExit(
            f"[{site}] the config starts from {fold_spec.weights}, which trained on {', '.join(seen)}: "
            "give --start with the first stage's fold models"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if epochs:  # a fixed number of epochs, in place of the config's and of its time budget
        options = {k: v for k, v in fold_spec.options.items() if k != "time"}
        fold_spec = replace(fold_spec, epochs=epochs, options=options, time=None)
    print(f"[{site}] training on {len(fold_spec.images)} images of {sorted(set(fold_spec.sites or ()))}", flush=True)
    t0 = time.perf_counter()
    model = train(fold_spec, log=lambda s: print(f"[{site}] {s}", flush=True))
    print(f"[{site}] trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return model


def report(
    results: list[SiteResult], metrics: list[tuple[str, float, bool]], model_name: str, at: float | None = None
) -> dict[str, Any]:
    """Markdown tables on stdout, per site at the best pooled threshold (or ``at``); every number as a mapping."""
    primary = metrics[0][0]
    pooled = {m: {t: Counts() for t in results[0].counts[m]} for m, _, _ in metrics}
    for r in results:
        for m in pooled:
            for t in pooled[m]:
                pooled[m][t].add(r.counts[m][t])
    best_t = max(pooled[primary], key=lambda t: pooled[primary][t].prf()[2])
    out: dict[str, Any] = {"model": model_name, "threshold": best_t, "sites": {}, "pooled": {}}
    print(f"\n### {model_name}: leave-one-site-out, best pooled F1 at {primary} with confidence {best_t}\n")
    if at is not None:
        if at not in pooled[primary]:
            raise SystemExit(f"--at {at}: not one of the thresholds swept ({', '.join(map(str, pooled[primary]))})")
        best_t = at
        print(f"Per site at confidence {at}:\n")
    head = " | ".join(f"{m} P / R / F1" for m, _, _ in metrics)
    print(f"| held-out site | images | objects | {head} | CPU s/MP |")
    print("|---|---|---|" + "---|" * len(metrics) + "---|")
    rows = [(r.site, r.images, r.truth, {m: r.counts[m][best_t] for m in pooled}, r) for r in results]
    rows.append(("**pooled**", sum(r.images for r in results), sum(r.truth for r in results),
                 {m: pooled[m][best_t] for m in pooled}, None))  # fmt: skip
    for site, n_img, n_truth, counts, r in rows:
        cells = " | ".join("{:.2f} / {:.2f} / **{:.2f}**".format(*counts[m].prf()) for m in pooled)
        speed = f"{r.seconds_detect / max(r.megapixels, 1e-9):.2f}" if r else ""
        print(f"| {site} | {n_img} | {n_truth} | {cells} | {speed} |")
        entry = {m: dict(zip(("precision", "recall", "f1"), map(lambda v: round(v, 4), counts[m].prf())))
                 | vars(counts[m]) for m in pooled}  # fmt: skip
        (out["pooled"] if r is None else out["sites"].setdefault(site, {})).update(entry)
    print(f"\nPooled F1 ({primary}) by confidence threshold:\n")
    print("| threshold | " + " | ".join(f"{t:.2f}" for t in pooled[primary]) + " |")
    print("|---|" + "---|" * len(pooled[primary]))
    print("| F1 | " + " | ".join(f"{c.prf()[2]:.3f}" for c in pooled[primary].values()) + " |")
    out["sweep"] = {m: {str(t): round(c.prf()[2], 4) for t, c in pooled[m].items()} for m in pooled}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="training YAML with datasets by site")
    ap.add_argument("--work", type=Path, required=True, help="folder for fold models and detections (resumable)")
    ap.add_argument(
        "--sites", nargs="*", help="held-out sites to run, each its own fold; a+b holds both out at once (default: all)"
    )
    ap.add_argument("--epochs", type=int, help="fold models train this many epochs (not the config's, nor its time)")
    ap.add_argument(
        "--not-scored", nargs="*", default=[], help="sites held out of training but not scored (seen by start weights)"
    )
    ap.add_argument(
        "--start", type=Path, help="folder of earlier fold models: each fold continues from its own (a second stage)"
    )
    ap.add_argument("--model", help="score this model on every site instead of training folds (not held out!)")
    ap.add_argument(
        "--tta", action="store_true", help="detectors and instance segmenters: score with mirrored views merged (--tta)"
    )
    ap.add_argument(
        "--scales",
        nargs="+",
        type=float,
        help="detectors: score the union of runs read at these resolutions (m/px), merged by box NMS",
    )
    ap.add_argument("--at", type=float, help="per-site table at this confidence (the shipped one), not the best")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="score with a model setting changed (iou=0.5, resolution_m=0.25, vectorize.grow_m=-0.3; repeatable)",
    )
    args = ap.parse_args()
    spec = spec_from_mapping(load_train_config(args.config))
    if not spec.sites:
        raise SystemExit(f"{args.config}: no sites (list the data under datasets: with a site each)")
    sites = args.sites or sorted(set(spec.sites))
    metrics = metrics_for(spec.task)
    settings = model_settings(args.set)
    if args.scales and (spec.task != "detect" or args.tta):
        raise SystemExit("--scales is for box detectors, without --tta")
    scales = "+".join(f"{r:g}" for r in args.scales or ())
    suffix = "".join(f"-{k}{v}" for k, v in settings.items()) + ("-tta" if args.tta else "")
    suffix += f"-scales{scales}" if scales else ""
    results = []
    for entry in sites:
        held = entry.split("+")
        if args.model:
            model = geovision.resolve_model(args.model)
        else:
            model = fold(spec, held, args.work, args.epochs, args.start)
        model = with_settings(model, settings)
        for site in (s for s in held if s not in args.not_scored):
            dets = args.work / entry / f"detections-{model.name}-{site}{suffix}"
            dets.mkdir(parents=True, exist_ok=True)
            results.append(score_site(site, model, spec, dets, metrics, args.tta, args.scales or ()))
    name = (args.model or f"{spec.output.name} (folds)") + (" with --tta" if args.tta else "")
    name += "".join(f", {k} {v}" for k, v in settings.items())
    name += f", union of reads at {scales.replace('+', ' + ')} m" if scales else ""
    summary = report(results, metrics, name, args.at)
    (args.work / f"results{suffix}.json").write_text(json.dumps(summary, indent=2))


def model_settings(pairs: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs as model config overrides (values read as YAML scalars); ``vectorize.FIELD``
    sets one of the polygon clean-up options."""
    names = {f.name for f in fields(geovision.ModelConfig)} | {f"vectorize.{f.name}" for f in fields(VectorizeOptions)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--set {pair}: give FIELD=VALUE with a model config field ({', '.join(sorted(names))})")
        out[key] = yaml.safe_load(value)
    return out


def with_settings(model: geovision.ModelConfig, settings: dict[str, Any]) -> geovision.ModelConfig:
    """``model`` with the ``--set`` overrides applied."""
    nested = {k.removeprefix("vectorize."): v for k, v in settings.items() if k.startswith("vectorize.")}
    plain = {k: v for k, v in settings.items() if not k.startswith("vectorize.")}
    return replace(model.with_overrides(**plain), vectorize=replace(model.vectorize, **nested))


if __name__ == "__main__":
    main()
