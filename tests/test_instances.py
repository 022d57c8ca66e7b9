"""Instance segmentation (YOLO-seg): one outline per object, merged across seams by mask IoU."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio import features
from scipy import ndimage

import geovision
from geovision.backends import Detections
from tests.conftest import fake_config, left_half_only, write_raster

T = Affine(0.1, 0, 500000, 0, -0.1, 4000000)


class BlobOutliner:
    """Blobs brighter than 128 as boxes with their exact outlines."""

    device = "cpu"

    def fit_batch(self, base: int) -> int:
        return base

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, iou: float | None = None
    ) -> list[Detections]:
        out = []
        for img in images:
            labels, n = ndimage.label(img[..., 0] > 128)
            polys = np.empty(n, dtype=object)
            for geom, v in features.shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4):
                polys[int(v) - 1] = shapely.geometry.shape(geom)
            boxes = np.asarray([p.bounds for p in polys], np.float32).reshape(-1, 4)
            out.append(Detections(boxes, np.full(n, 0.9, np.float32), np.zeros(n, np.int64), polys))
        return out


def disc_image(h: int, w: int, discs: list[tuple[int, int, int]]) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    img = np.full((3, h, w), 40, np.uint8)
    for cx, cy, r in discs:
        img[:, (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 230
    return img


def test_disc_across_a_four_tile_corner_is_one_outline(tmp_path):
    # r=30 discs: one inside a tile, one on the 96..112 corner (larger than the 16 px overlap)
    discs = [(25, 25, 15), (104, 104, 30)]
    path = write_raster(tmp_path / "d.tif", disc_image(200, 200, discs), transform=T)
    cfg = fake_config()
    cfg = cfg.with_overrides(task="instance")
    r = geovision.detect(path, cfg, tmp_path / "d.gpkg", backend=BlobOutliner())
    assert len(r.features) == 2
    yy, xx = np.mgrid[:200, :200]
    for cx, cy, rad in discs:
        truth_px = (xx - cx) ** 2 + (yy - cy) ** 2 <= rad * rad
        truth = shapely.union_all(
            [
                shapely.geometry.shape(g)
                for g, _ in features.shapes(truth_px.astype(np.uint8), mask=truth_px, transform=T)
            ]
        )
        hits = r.features[r.features.intersects(truth.centroid)]
        assert len(hits) == 1
        got = hits.geometry.iloc[0]
        assert got.geom_type == "Polygon"
        assert got.symmetric_difference(truth).area / truth.area < 0.01
        assert hits["area_m2"].iloc[0] == pytest.approx(truth_px.sum() * 0.01, rel=0.01)


def test_real_yolo_seg_network_runs_through_detect(tmp_path):
    """An untrained YOLO11n-seg: the backend decodes outlines and the pipeline writes them."""
    import torch

    from geovision.backends.yolo import import_ultralytics

    torch.manual_seed(0)
    weights = tmp_path / "seg.pt"
    model = import_ultralytics().YOLO("yolo11n-seg.yaml")
    head = model.model.model[-1]
    with torch.no_grad():  # positive prototypes and coefficients: every mask fills its box
        head.proto.cv3.conv.weight.zero_()
        head.proto.cv3.bn.bias.fill_(3.0)
        for branch in head.cv4:
            branch[-1].weight.zero_()
            branch[-1].bias.fill_(1.0)
    model.save(weights)
    path = write_raster(tmp_path / "d.tif", disc_image(200, 200, [(60, 60, 30)]), transform=T)
    cfg = geovision.resolve_model(weights)
    assert cfg.task == "instance"
    cfg = cfg.with_overrides(tile_size=128, overlap=32, confidence=0.0001)
    r = geovision.detect(path, cfg, tmp_path / "out.gpkg")
    assert len(r.features) > 0
    bounds = shapely.box(*(T @ (0, 200)), *(T @ (200, 0)))
    assert all(g.is_valid and g.geom_type == "Polygon" and bounds.covers(g) for g in r.features.geometry)
    # the same network exported to ONNX gives the same outlines without torch
    from geovision.backends.export import export_onnx

    onnx_cfg = geovision.resolve_model(export_onnx(cfg))
    assert onnx_cfg.task == "instance" and onnx_cfg.backend == "onnx"
    o = geovision.detect(path, onnx_cfg)
    # random weights put many scores near the tiny threshold, where float differences may flip one
    assert abs(len(o.features) - len(r.features)) <= max(1, len(r.features) // 50)
    assert o.features.union_all().symmetric_difference(r.features.union_all()).area < 0.02 * r.features.area.sum()


def test_mask_decoding_by_hand():
    """Prototype 0 is a disc, prototype 1 its complement; the object's coefficients pick the disc."""
    from geovision.backends.base import decode_instances

    size, h = 64, 16  # prototypes at a quarter of the tile
    yy, xx = np.mgrid[:h, :h]
    disc = ((xx - 7.5) ** 2 + (yy - 7.5) ** 2 <= 16).astype(np.float32)
    proto = np.stack([disc * 20 - 10, (1 - disc) * 20 - 10])  # logits: +10 inside, -10 outside
    # two anchors, one class; anchor 0 is the object (box around the disc), anchor 1 is below threshold
    out = np.zeros((4 + 1 + 2, 2), np.float32)
    out[:4, 0] = [32, 32, 40, 40]  # cx, cy, w, h
    out[4] = [0.9, 0.01]
    out[5:, 0] = [1.0, -1.0]
    det = decode_instances(out, proto, confidence=0.25, iou=0.5, size=size)
    assert len(det) == 1 and det.scores[0] == pytest.approx(0.9)
    poly = det.polygons[0]
    # the disc of radius 4 prototype pixels is radius 16 tile pixels around (32, 32)
    assert poly.centroid.distance(shapely.Point(32, 32)) < 1
    assert poly.area == pytest.approx(np.pi * 16**2, rel=0.1)


def test_outlines_are_cleaned_up_as_the_model_says(tmp_path):
    """An instance model's ``vectorize`` settings apply to its outlines: holes filled, small ones
    dropped, stair-steps squared (and kept as traced with regularize and simplify off)."""
    from geovision.config import VectorizeOptions

    img = np.full((3, 200, 200), 40, np.uint8)
    img[:, 20:80, 20:100] = 230  # a 60 x 80 px house with a courtyard
    img[:, 40:50, 40:60] = 40
    img[:, 150:156, 150:156] = 230  # a 6 x 6 px speck: 0.36 m2
    yy, xx = np.mgrid[:200, :200]
    diamond = np.abs(xx - 150) + np.abs(yy - 60) <= 30  # a rotated square, stair-stepped on the grid
    img[:, diamond] = 230
    path = write_raster(tmp_path / "h.tif", img, transform=T)
    opts = VectorizeOptions(simplify_m=0.1, min_area_m2=1.0, fill_holes=True, regularize=True)
    cfg = fake_config(tile_size=256, overlap=16).with_overrides(task="instance")
    cfg = replace(cfg, vectorize=opts)
    got = geovision.detect(path, cfg, backend=BlobOutliner()).features
    assert len(got) == 2  # the speck is below 1 m2
    house = got[got.intersects(shapely.Point(T @ (22, 22)))].geometry.iloc[0]
    assert not house.interiors and house.area == pytest.approx(60 * 80 * 0.01, rel=0.01)
    rotated = got[got.intersects(shapely.Point(T @ (150, 60)))].geometry.iloc[0]
    assert len(rotated.exterior.coords) == 5  # four corners: squared, no stair-steps
    cfg = replace(cfg, vectorize=replace(opts, simplify_m=0.0))
    raw = geovision.detect(path, cfg, backend=BlobOutliner(), regularize=False).features
    traced = raw[raw.intersects(shapely.Point(T @ (150, 60)))].geometry.iloc[0]
    assert len(traced.exterior.coords) > 5


class Overlapping:
    """Three outlines in each tile: a house, a weaker one overlapping its side, a weaker one inside it."""

    device = "cpu"

    def fit_batch(self, base: int) -> int:
        return base

    def detect(self, images, confidence=None, iou=None) -> list[Detections]:
        polys = np.empty(3, dtype=object)
        polys[:] = [shapely.box(10, 10, 50, 50), shapely.box(40, 10, 80, 50), shapely.box(20, 20, 40, 40)]
        boxes = np.asarray([p.bounds for p in polys], np.float32)
        scores = np.array([0.9, 0.6, 0.5], np.float32)
        return [Detections(boxes, scores, np.zeros(3, np.int64), polys) for _ in images]


def test_disjoint_outlines_are_carved_apart_best_first(tmp_path):
    from geovision.config import VectorizeOptions

    path = write_raster(tmp_path / "o.tif", np.full((3, 100, 100), 90, np.uint8), transform=T)
    cfg = fake_config(tile_size=128, overlap=16).with_overrides(task="instance", iou=0.3)
    overlapping = geovision.detect(path, cfg, backend=Overlapping()).features
    assert len(overlapping) == 3 and not overlapping.geometry.iloc[0].disjoint(overlapping.geometry.iloc[1])
    cfg = replace(cfg, vectorize=VectorizeOptions(disjoint=True, min_area_m2=1.0))
    got = geovision.detect(path, cfg, backend=Overlapping()).features.sort_values("score", ascending=False)
    assert len(got) == 2  # the one inside the house has nothing left
    house, side = got.geometry.iloc[0], got.geometry.iloc[1]
    assert house.equals(shapely.box(*(T @ (10, 50)), *(T @ (50, 10))))
    assert side.equals(shapely.box(*(T @ (50, 50)), *(T @ (80, 10)))) and house.intersection(side).area == 0
    assert got["area_m2"].iloc[1] == pytest.approx(30 * 40 * 0.01, rel=0.01)  # ground m2 (UTM scale)


class LeftHalfOutliner(BlobOutliner):
    """A one-sided instance segmenter: it misses every blob whose box centre is in the tile's right half."""

    def detect(self, images, confidence=None, iou=None):
        return left_half_only(images, super().detect(images, confidence, iou))


def test_tta_outlines_from_mirrored_tiles_come_back_in_place_once_each(tmp_path):
    """L-shaped houses (no mirror symmetry): an outline mapped back the wrong way would not fit."""
    ells = [
        shapely.Polygon([(4, 4), (20, 4), (20, 10), (10, 10), (10, 24), (4, 24)]),
        shapely.Polygon([(40, 6), (58, 6), (58, 26), (50, 26), (50, 14), (40, 14)]),
        shapely.Polygon([(36, 36), (60, 36), (60, 44), (44, 44), (44, 58), (36, 58)]),
    ]
    img = np.full((3, 64, 64), 40, np.uint8)
    img[:, features.rasterize(ells, out_shape=(64, 64)) > 0] = 230
    path = write_raster(tmp_path / "l.tif", img, transform=T)
    cfg = fake_config(tile_size=64, overlap=0).with_overrides(task="instance")
    plain = geovision.detect(path, cfg, backend=LeftHalfOutliner())
    assert len(plain.features) == 1  # only the left one
    both = geovision.detect(path, cfg, backend=LeftHalfOutliner(), tta=True)
    assert len(both.features) == 3  # left one seen plain and top-bottom mirrored: merged into one
    found = both.features.to_crs("EPSG:32617").geometry
    for ell in ells:
        truth = shapely.affinity.affine_transform(ell, [T.a, T.b, T.d, T.e, T.xoff, T.yoff])
        hits = found[found.intersects(truth.representative_point())]
        assert len(hits) == 1
        assert hits.iloc[0].is_valid
        assert hits.iloc[0].symmetric_difference(truth).area / truth.area < 0.01


class FixedOutline(BlobOutliner):
    """Always one outline, as given, in tile pixels (a network's mask can reach past the raster's edge)."""

    def __init__(self, outline: shapely.Polygon) -> None:
        self.outline = outline

    def detect(self, images, confidence=None, iou=None):
        polys = np.array([self.outline], dtype=object)
        return [
            Detections(
                np.asarray([self.outline.bounds], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64), polys
            )
            for _ in images
        ]


def test_an_outline_cut_in_two_by_the_raster_edge_stays_one_polygon(tmp_path):
    """A U-shape whose bar lies past the raster's right edge: clipped to the raster it is two pieces;
    the object keeps its larger piece, a Polygon like every other outline in the layer."""
    path = write_raster(tmp_path / "u.tif", disc_image(40, 40, [(20, 20, 5)]), transform=T)
    u = shapely.box(25, 5, 45, 35).difference(shapely.box(25, 14, 42, 31))
    r = geovision.detect(
        path, fake_config(tile_size=64, overlap=0).with_overrides(task="instance"), backend=FixedOutline(u)
    )
    assert list(r.features.geom_type) == ["Polygon"]
    want = shapely.affinity.affine_transform(shapely.box(25, 5, 40, 14), [T.a, T.b, T.d, T.e, T.xoff, T.yoff])
    assert r.features.to_crs("EPSG:32617").geometry.iloc[0].symmetric_difference(want).area < 1e-6


def test_an_instance_model_that_finds_nothing_writes_an_empty_layer(tmp_path):
    """No outline in any tile (a dark scene): a valid, empty layer with the usual fields, no error."""
    path = write_raster(tmp_path / "d.tif", disc_image(200, 200, []), transform=T)
    cfg = fake_config().with_overrides(task="instance")
    r = geovision.detect(path, cfg, tmp_path / "d.gpkg", backend=BlobOutliner())
    assert len(r.features) == 0 and r.output is not None and r.output.exists()
    assert list(gpd.read_file(r.output).columns) == ["class", "class_id", "score", "area_m2", "source", "geometry"]
