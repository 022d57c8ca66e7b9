"""Score shipped models on the parts of their training images held out for validation.

    python benchmarks/eval_models.py configs/training/trees.yaml --model trees

Runs ``geovision detect`` on every training image, keeps predictions and truth
whose centres fall in the held-out blocks (recorded in the model YAML, or
re-derived from the training config, which is deterministic), and evaluates
them with ``geovision.evaluate``: polygon/box F1 at IoU 0.5, and box
precision/recall at IoU 0.4 as DeepForest reports. Prints Markdown.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

import geovision
from geovision.evaluate import evaluate
from geovision.labels import LabelReport
from geovision.training import chip_detection_dataset, load_train_config, read_labels, spec_from_mapping

STAND_IN = "EPSG:32631"


def held_out_regions(config: Path, model: geovision.ModelConfig) -> list[tuple[str, tuple[float, ...]]]:
    """(image name, bounds) of the validation blocks of the run that made ``model``."""
    recorded = (model.extra.get("training", {}).get("data", {}) or {}).get("val_regions")
    if recorded:
        return [(r["image"], tuple(r["bounds"])) for r in recorded]
    spec = spec_from_mapping(load_train_config(config))
    from geovision.training import _chip_options

    if spec.task == "segment":
        from geovision.labels import read_vector_shapes
        from geovision.train_segment import chip_segmentation_dataset

        items = []
        for image, labels in zip(spec.images, spec.labels * (len(spec.images) // len(spec.labels))):
            items += read_vector_shapes(labels, [image], spec.classes, LabelReport(), spec.class_field)
        return chip_segmentation_dataset(items, _chip_options(spec)).split.val_regions
    with tempfile.TemporaryDirectory() as tmp:
        items = read_labels(spec, LabelReport())
        return chip_detection_dataset(items, Path(tmp), _chip_options(spec), spec.classes).split.val_regions


def truth_layer(spec, image: Path, labels: Path) -> gpd.GeoDataFrame:
    """The labels of one image as a layer in the coordinates detect writes for it."""
    if labels.suffix.lower() in {".xml", ".csv"}:
        from geovision.labels import read_pixel_labels
        from geovision.raster import open_raster

        item = read_pixel_labels(labels, image, spec.classes, LabelReport())
        with open_raster(image) as ds:
            crs = ds.crs
            t = ds.transform if crs else None
        geoms = [shapely.box(*b) for b in item.boxes]
        if t is not None:
            geoms = [shapely.transform(g, lambda xy: np.column_stack(t @ (xy[:, 0], xy[:, 1]))) for g in geoms]
        return gpd.GeoDataFrame({"class": [spec.classes[c] for c in item.classes]}, geometry=geoms, crs=crs)
    gdf = gpd.read_file(labels)
    gdf["class"] = gdf[spec.class_field].astype(str) if spec.class_field else spec.classes[0]
    return gdf


def within(gdf: gpd.GeoDataFrame, regions: list[tuple[float, ...]]) -> gpd.GeoDataFrame:
    if len(gdf) == 0:
        return gdf
    area = shapely.union_all([shapely.box(*r) for r in regions])
    return gdf[gdf.geometry.centroid.within(area)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="the training YAML the model was made with")
    ap.add_argument("--model", required=True, help="model name or YAML to score")
    ap.add_argument("--backend", default="auto", choices=["auto", "onnx", "torch"])
    ap.add_argument("--quantize", choices=["int8"])
    args = ap.parse_args()
    spec = spec_from_mapping(load_train_config(args.config))
    model = geovision.resolve_model(args.model)
    regions = held_out_regions(args.config, model)
    labels = spec.labels * (len(spec.images) // len(spec.labels))
    preds, truths = [], []
    seconds = 0.0
    for image, lab in zip(spec.images, labels):
        mine = [b for name, b in regions if name == image.name]
        if not mine:
            continue
        t0 = time.perf_counter()
        result = geovision.detect(
            image,
            model,
            pixel_coords=True,
            pixel_size=spec.image_resolution,
            runtime=args.backend,
            quantize=args.quantize,
        )
        seconds += time.perf_counter() - t0
        truth = truth_layer(spec, image, lab)
        p, t = within(result.features, mine), within(truth, mine)
        if p.crs is None:  # pixel coordinates: a stand-in metric CRS, far from any real image here
            p, t = p.set_crs(STAND_IN), t.set_crs(STAND_IN)
        preds.append(p.to_crs("EPSG:4326"))
        truths.append(t.to_crs("EPSG:4326") if t.crs else t)
    pred = gpd.GeoDataFrame(gpd.pd.concat(preds, ignore_index=True), crs="EPSG:4326")
    truth = gpd.GeoDataFrame(gpd.pd.concat(truths, ignore_index=True), crs="EPSG:4326")
    print(
        f"model {model.name}: {len(regions)} held-out blocks, {len(truth)} truth objects, "
        f"{len(pred)} predictions, detect took {seconds:.1f} s ({args.backend} backend, {args.quantize or 'float'})"
    )
    print("| metric | precision | recall | F1 | AP50 | AP50:95 |")
    print("|---|---|---|---|---|---|")
    for label, iou, boxes in [("IoU 0.5", 0.5, False), ("box IoU 0.4 (DeepForest)", 0.4, True)]:
        o = evaluate(pred, truth, iou=iou, class_field=None, boxes=boxes).overall
        print(f"| {label} | {o.precision:.3f} | {o.recall:.3f} | {o.f1:.3f} | {o.ap50} | {o.ap} |")


if __name__ == "__main__":
    main()
