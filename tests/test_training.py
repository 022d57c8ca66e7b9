"""geovision train and export: labels to chips, the spatial split, packages that detect runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import yaml
from affine import Affine
from click.testing import CliRunner
from PIL import Image

import geovision
from geovision.cli.main import main
from geovision.config import matched_resolution
from geovision.labels import ImageLabels, ImageShapes, LabelReport, read_areas, read_vector_labels, read_vector_shapes
from geovision.training.chips import IGNORE, ChipOptions, chip_detection_dataset, chip_segmentation_dataset
from geovision.training.run import read_labels, read_polygons
from geovision.training.scoring import THRESHOLDS
from geovision.training.spec import spec_from_mapping
from tests.conftest import squares_image, write_raster

T = Affine(0.1, 0, 500000, 0, -0.1, 4000000)
SQUARES = [(20, 20, 44, 44), (100, 30, 130, 60), (60, 150, 90, 176), (170, 170, 200, 204), (200, 40, 230, 70)]


def scene(tmp_path: Path) -> tuple[Path, Path]:
    """A 256 px raster with white squares, and their outlines as a GeoPackage in EPSG:4326."""
    img = write_raster(tmp_path / "scene.tif", squares_image(256, 256, SQUARES), transform=T)
    polys = [shapely.box(*(T @ (x1, y2)), *(T @ (x2, y1))) for x1, y1, x2, y2 in SQUARES]
    gdf = gpd.GeoDataFrame({"kind": ["hut"] * len(polys)}, geometry=polys, crs="EPSG:32617").to_crs("EPSG:4326")
    gdf.loc[len(gdf)] = ["hut", shapely.box(-50, -10, -49, -9).buffer(0)]  # far outside the raster
    labels = tmp_path / "labels.gpkg"
    gdf.to_file(labels)
    return img, labels


def train_config(folder: Path, **settings) -> Path:
    """A training YAML in ``folder`` for :func:`scene`'s raster and labels, with ``settings`` added."""
    cfg = folder / "train.yaml"
    base = {"task": "detect", "images": ["scene.tif"], "labels": ["labels.gpkg"], "classes": ["hut"]}
    cfg.write_text(yaml.safe_dump({**base, "resolution": 0.1, "tile_size": 64, "output": "tuned", **settings}))
    return cfg


def test_vector_labels_land_on_the_right_pixels_through_reprojection(tmp_path):
    img, labels = scene(tmp_path)
    report = LabelReport()
    [item] = read_vector_labels(labels, [img], ["hut"], report, class_field="kind")
    assert report.used == 5 and report.dropped["outside every image"] == 1
    # reprojection to 4326 and back bends straight edges slightly: within a tenth of a pixel
    np.testing.assert_allclose(np.sort(item.boxes, axis=0), np.sort(np.asarray(SQUARES, float), axis=0), atol=0.1)


def test_one_label_layer_over_many_tiles_is_reprojected_once_per_crs(tmp_path, monkeypatch):
    """A survey's one footprint layer over many tiles: each tile's boxes land on its own pixels, and the
    layer is reprojected once for each CRS the tiles are in, not once per tile."""
    from rasterio.warp import calculate_default_transform

    img, labels = scene(tmp_path)
    east = T @ Affine.translation(128, 0)  # a second tile, overlapping the first by half
    shifted = [(x1 - 128, y1, x2 - 128, y2) for x1, y1, x2, y2 in SQUARES if x1 >= 128]
    tile2 = write_raster(tmp_path / "east.tif", squares_image(256, 256, shifted), transform=east)
    bounds = (*(T @ (0, 256)), *(T @ (256, 0)))
    web, width, height = calculate_default_transform("EPSG:32617", "EPSG:3857", 256, 256, *bounds)
    tile3 = write_raster(tmp_path / "web.tif", squares_image(height, width, []), crs="EPSG:3857", transform=web)
    calls = []
    to_crs = gpd.GeoDataFrame.to_crs
    monkeypatch.setattr(gpd.GeoDataFrame, "to_crs", lambda self, *a, **k: calls.append(a) or to_crs(self, *a, **k))
    items = read_vector_labels(labels, [img, tile2, tile3], ["hut"], LabelReport(), class_field="kind")
    assert len(calls) == 2
    np.testing.assert_allclose(np.sort(items[0].boxes, axis=0), np.sort(np.asarray(SQUARES, float), axis=0), atol=0.1)
    on_east = [b for b in np.asarray(SQUARES, float) - (128, 0, 128, 0) if b[2] > 0]  # whole boxes, not cut
    np.testing.assert_allclose(np.sort(items[1].boxes, axis=0), np.sort(on_east, axis=0), atol=0.1)
    for image, item in zip([img, tile2, tile3], items):  # as if each tile were read alone
        [alone] = read_vector_labels(labels, [image], ["hut"], LabelReport(), class_field="kind")
        np.testing.assert_array_equal(item.boxes, alone.boxes)
    assert len(items[2].boxes) == len(SQUARES)


@pytest.mark.parametrize("task", ["detect", "instance"])
def test_a_label_file_given_for_each_tile_is_read_once_for_all(tmp_path, task):
    """A training YAML of datasets lists one footprint layer beside each tile of a survey: its labels
    are counted once, as used where they fall on any tile, and dropped only outside all of them."""
    img, labels = scene(tmp_path)
    east = write_raster(tmp_path / "east.tif", squares_image(256, 256, []), transform=T @ Affine.translation(128, 0))
    raw = {"task": task, "images": [img, east], "labels": [labels, labels], "classes": ["hut"], "output": "x"}
    spec = spec_from_mapping({**raw, "class_field": "kind"})
    report = LabelReport()
    items = read_labels(spec, report) if task == "detect" else read_polygons(spec, report)
    assert [item.image for item in items] == [img, east]
    assert [len(item.classes) for item in items] == [5, 3]  # three squares reach past x = 128 px
    assert report.used == 8 and dict(report.dropped) == {"outside every image": 1}


def test_chips_and_their_labels_line_up_and_split_leaks_nothing(tmp_path):
    img, labels = scene(tmp_path)
    [item] = read_vector_labels(labels, [img], ["hut"], LabelReport(), class_field="kind")
    out = tmp_path / "chips"
    stats = chip_detection_dataset(
        [item], out, ChipOptions(tile_size=64, resolution_m=0.1, val_fraction=0.25, max_empty_share=0.0), ["hut"]
    )
    assert stats.train > 0 and stats.val > 0
    # every label box covers white pixels of its chip, and its surroundings are background
    for split in ("train", "val"):
        for txt in (out / "labels" / split).glob("*.txt"):
            chip = np.asarray(Image.open(out / "images" / split / f"{txt.stem}.png"))
            for line in txt.read_text().splitlines():
                _, cx, cy, w, h = map(float, line.split())
                x1, y1 = round((cx - w / 2) * 64), round((cy - h / 2) * 64)
                x2, y2 = round((cx + w / 2) * 64), round((cy + h / 2) * 64)
                assert (chip[y1:y2, x1:x2, 0] == 230).all(), (txt.name, line)

    # no raster pixel is in a training chip and a validation chip
    def footprint(split):
        cover = np.zeros((256 + 64, 256 + 64), bool)
        for png in (out / "images" / split).glob("*.png"):
            if png.stem.endswith("_T"):
                continue
            y0, x0 = map(int, png.stem.split("_")[-2:])
            cover[y0 : y0 + 64, x0 : x0 + 64] = True
        return cover[:256, :256]

    assert not (footprint("train") & footprint("val")).any()


@pytest.mark.parametrize("stride", [32, 24])
def test_the_split_loses_no_label_between_training_and_validation(tmp_path, stride):
    """Chips line up with the validation blocks, and the blocks at the right and bottom edges reach the
    edge: whichever blocks are held out, every label lies in a training or a validation chip (before,
    a held-out block's labels were mostly in chips that touched both splits, and were dropped), also
    with a stride that does not divide the chip."""
    squares = [(x, y, x + 12, y + 12) for x in (8, 40, 72, 104, 136, 168, 184) for y in (8, 40, 72, 104, 118)]
    img = write_raster(tmp_path / "ortho.tif", squares_image(136, 200, squares), transform=T)
    item = ImageLabels(img, np.asarray(squares, np.float32), np.zeros(len(squares), np.int64))
    edge_blocks = 0
    for seed in range(6):
        opts = ChipOptions(
            tile_size=64, resolution_m=0.1, val_fraction=0.3, stride=stride, max_empty_share=0.0, seed=seed
        )
        stats = chip_detection_dataset([item], tmp_path / f"chips{seed}", opts, ["hut"])
        assert stats.labels_in_no_chip == 0 and stats.boxes_val > 0 and stats.boxes_train > 0, seed
        for _, (x0, y0, x1, y1) in stats.split.val_regions:  # blocks of 64 px, or up to the edge
            assert x1 - x0 == pytest.approx(6.4) or x1 == pytest.approx(T.c + 20.0)
            assert y1 - y0 == pytest.approx(6.4) or y0 == pytest.approx(T.f - 13.6)
            edge_blocks += (x1 == pytest.approx(T.c + 20.0)) + (y0 == pytest.approx(T.f - 13.6))
    assert edge_blocks > 0


@pytest.mark.parametrize("outlines", [False, True], ids=["boxes", "outlines"])
def test_labels_on_no_data_are_not_taught(tmp_path, outlines):
    """A footprint mapped where the raster holds no data (a mosaic's empty part) is no label of any
    chip, nor is one of which only a quarter lies on imagery (under min_visible, 0.4)."""
    squares = [(10, 10, 30, 30), (80, 10, 100, 30), (40, 40, 60, 60), (20, 70, 30, 90)]
    data = squares_image(128, 128, squares)
    data[:, :, 70:] = 0  # no data east of column 70: the second square is OSM's, not the image's
    data[:, 75:, :] = 0  # and south of row 75: the fourth square is three quarters on no data
    img = write_raster(tmp_path / "mosaic.tif", data, transform=T, nodata=0)
    polys = [shapely.box(*(T @ (x1, y2)), *(T @ (x2, y1))) for x1, y1, x2, y2 in squares]
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"kind": ["hut"] * 4}, geometry=polys, crs="EPSG:32617").to_file(labels)
    read = read_vector_shapes if outlines else read_vector_labels
    [item] = read(labels, [img], ["hut"], LabelReport(), class_field="kind")
    out = tmp_path / "chips"
    opts = ChipOptions(tile_size=128, resolution_m=0.1, val_fraction=0.0, max_empty_share=0.0)
    stats = chip_detection_dataset([item], out, opts, ["hut"])
    assert stats.train == 2  # the chip and its transpose
    assert stats.labels_in_no_chip == 2  # reported to the user as not taught
    if outlines:  # a segmenter learns the fourth's pixels on imagery: only the second is untaught
        assert chip_segmentation_dataset([item], opts).labels_in_no_chip == 1
    [txt] = [t for t in (out / "labels" / "train").glob("*.txt") if not t.stem.endswith("_T")]
    centres = []
    for line in txt.read_text().splitlines():
        values = np.asarray(line.split()[1:], float) * 128
        if outlines:  # x y pairs of the outline
            xy = values.reshape(-1, 2)
            values = np.r_[(xy.min(0) + xy.max(0)) / 2]
        centres.append(tuple(np.round(values[:2])))  # a box's centre x, y come first
    assert sorted(centres) == [(20.0, 20.0), (50.0, 50.0)]


def test_a_self_crossing_footprint_cut_by_a_chip_edge_is_counted_not_fatal(tmp_path):
    """OSM footprints can cross themselves; cutting one at a chip's edge to count it as taught must
    not fail (GEOS refuses to intersect an invalid polygon), for detectors and segmenters alike."""
    img = write_raster(tmp_path / "ortho.tif", squares_image(128, 128, [(50, 50, 78, 78)]), transform=T)
    bowtie = shapely.Polygon([(50, 50), (78, 78), (78, 50), (50, 78)])  # crosses itself at (64, 64)
    off = shapely.box(200, 200, 210, 210)  # off the image: in no chip
    item = ImageShapes(img, [bowtie, off], np.zeros(2, np.int64))
    opts = ChipOptions(tile_size=64, resolution_m=0.1, val_fraction=0.0, max_empty_share=0.0)
    assert chip_segmentation_dataset([item], opts).labels_in_no_chip == 1
    assert chip_detection_dataset([item], tmp_path / "chips", opts, ["hut"]).labels_in_no_chip == 1


def partly_mapped(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A 256 x 128 px raster with four huts; only the two in its western 100 px are labelled, and an
    area layer (in EPSG:4326, as users draw it) says the labels are complete there only."""
    squares = [(10, 10, 30, 30), (70, 70, 90, 90), (105, 100, 125, 120), (180, 20, 200, 40)]
    img = write_raster(tmp_path / "ortho.tif", squares_image(128, 256, squares), transform=T)
    polys = [shapely.box(*(T @ (x1, y2)), *(T @ (x2, y1))) for x1, y1, x2, y2 in squares[:2]]
    labels = tmp_path / "huts.gpkg"
    gpd.GeoDataFrame({"kind": ["hut", "hut"]}, geometry=polys, crs="EPSG:32617").to_file(labels)
    area = tmp_path / "mapped.geojson"
    west = shapely.box(*(T @ (0, 128)), *(T @ (100, 0)))
    gpd.GeoDataFrame(geometry=[west], crs="EPSG:32617").to_crs("EPSG:4326").to_file(area)
    return img, labels, area


@pytest.mark.parametrize("outlines", [False, True], ids=["boxes", "outlines"])
def test_outside_the_labelled_area_is_no_data(tmp_path, outlines):
    """Where the labels are known to be missing, an unlabelled hut is not taught as background: its
    pixels are blanked as no data, and a chip wholly outside the area is not cut."""
    img, labels, area = partly_mapped(tmp_path)
    read = read_vector_shapes if outlines else read_vector_labels
    [item] = read(labels, [img], ["hut"], LabelReport(), class_field="kind")
    item = dataclasses.replace(item, area=read_areas(area, [img])[0])
    out = tmp_path / "chips"
    opts = ChipOptions(tile_size=128, resolution_m=0.1, val_fraction=0.0, max_empty_share=1.0)
    chip_detection_dataset([item], out, opts, ["hut"])
    names = sorted(p.stem for p in (out / "images" / "train").glob("*.png") if not p.stem.endswith("_T"))
    assert names == ["000_ortho_0_0", "000_ortho_0_64"]  # the chip at column 128 lies outside the area
    chip = np.asarray(Image.open(out / "images" / "train" / "000_ortho_0_0.png"))
    assert (chip[105:115, 110:120] == 0).all() and (chip[:, 101:] == 0).all()  # the unlabelled hut is gone
    assert (chip[15:25, 15:25] == 230).all() and (chip[40:60, 40:60] == 40).all()  # the area is as read
    assert len((out / "labels" / "train" / "000_ortho_0_0.txt").read_text().splitlines()) == 2
    # the second chip holds imagery from column 64 to 100, with the second hut
    [line] = (out / "labels" / "train" / "000_ortho_0_64.txt").read_text().splitlines()
    values = np.asarray(line.split()[1:], float) * 128
    centre = values.reshape(-1, 2).mean(0) if outlines else values[:2]  # an outline's corners, or a box's centre
    assert np.allclose(centre, (16, 80), atol=1)


def test_validation_blocks_are_drawn_inside_the_labelled_area(tmp_path):
    """A hut labelled outside the area is taught nowhere, so its block must not be the one held out
    for validation (which would then measure nothing)."""
    img, labels, area = partly_mapped(tmp_path)
    [item] = read_vector_labels(labels, [img], ["hut"], LabelReport(), class_field="kind")
    east = np.asarray([[180, 20, 200, 40]], np.float32)  # mapped by chance, east of the area
    item = dataclasses.replace(item, boxes=np.r_[item.boxes, east], classes=np.r_[item.classes, 0])
    item = dataclasses.replace(item, area=read_areas(area, [img])[0])
    for seed in range(8):
        opts = ChipOptions(tile_size=64, resolution_m=0.1, val_fraction=0.5, max_empty_share=0.0, seed=seed)
        stats = chip_detection_dataset([item], tmp_path / f"chips{seed}", opts, ["hut"])
        assert stats.split.val_regions and all(b[2] <= T.c + 0.1 * 128 for _, b in stats.split.val_regions)


def test_segmenter_chips_leave_out_what_lies_outside_the_labelled_area(tmp_path):
    img, labels, area = partly_mapped(tmp_path)
    [item] = read_vector_shapes(labels, [img], ["hut"], LabelReport(), class_field="kind")
    item = dataclasses.replace(item, area=read_areas(area, [img])[0])
    opts = ChipOptions(tile_size=128, resolution_m=0.1, val_fraction=0.0)
    chips = chip_segmentation_dataset([item], opts)
    assert len(chips.train_masks) == 2  # of three chip places, one lies outside the area
    mask = chips.train_masks[0]
    assert (mask[15:25, 15:25] == 1).all() and (mask[105:115, 110:120] == IGNORE).all()
    assert (mask[:, :100] != IGNORE).all() and (mask[:, 100:] == IGNORE).all()


def test_train_cli_records_the_labelled_area_and_refuses_one_off_the_image(tmp_path):
    img, labels, area = partly_mapped(tmp_path)
    huts = gpd.read_file(labels)  # and one hut east of the area, mapped there by chance
    huts.loc[len(huts)] = ["hut", shapely.box(*(T @ (180, 40)), *(T @ (200, 20)))]
    huts.to_file(labels)
    args = ["train", "detect", "--images", str(img), "--labels", str(labels), "--classes", "hut"]
    args += ["--resolution", "0.1", "--tile-size", "64", "--epochs", "1", "--batch", "4", "--val-fraction", "0.5"]
    r = CliRunner().invoke(main, [*args, "-q", "--areas", str(area), "-o", str(tmp_path / "pkg")])
    assert r.exit_code == 0, r.stderr
    cfg = yaml.safe_load((tmp_path / "pkg" / "model.yaml").read_text())
    assert cfg["training"]["data"]["areas"] == ["../mapped.geojson"]
    assert cfg["training"]["data"]["labels_used"] == 2
    assert cfg["training"]["data"]["labels_dropped"] == {"outside the labelled area": 1}
    elsewhere = tmp_path / "elsewhere.geojson"
    gpd.GeoDataFrame(geometry=[shapely.box(10, 10, 11, 11)], crs="EPSG:4326").to_file(elsewhere)
    r = CliRunner().invoke(main, [*args, "-q", "--areas", str(elsewhere), "-o", str(tmp_path / "pkg2")])
    assert r.exit_code != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("no polygon of it covers ortho.tif")
    assert not (tmp_path / "pkg2").exists() and not list(tmp_path.glob(".pkg2*"))


def test_train_cli_to_package_that_detect_and_onnx_run(tmp_path, recwarn):
    img, labels = scene(tmp_path)
    pkg = tmp_path / "huts"
    r = CliRunner().invoke(
        main,
        [
            "train",
            "detect",
            "--images",
            str(img),
            "--labels",
            str(labels),
            "--classes",
            "hut",
            "--class-field",
            "kind",
            "--resolution",
            "0.1",
            "--tile-size",
            "64",
            "--epochs",
            "1",
            "--batch",
            "4",
            "--val-fraction",
            "0.25",
            "-o",
            str(pkg),
            "-q",
        ],
    )
    assert r.exit_code == 0, r.stderr
    # the aerial augmentations (the default) reach the trainer without a false alarm about them
    assert not [w for w in recwarn if "not valid for transform" in str(w.message)]
    cfg = yaml.safe_load((pkg / "model.yaml").read_text())
    assert cfg["classes"] == ["hut"] and cfg["tile_size"] == 64 and cfg["resolution"] == 0.1
    assert len(cfg["sha256"]) == 64 and (pkg / cfg["weights"]).is_file()
    assert "metrics" in cfg and cfg["training"]["data"]["labels_dropped"] == {"outside every image": 1}
    # the data is recorded relative to the package, so the record holds wherever the project is cloned
    assert cfg["training"]["data"]["images"] == ["../" + img.name]
    assert (pkg / cfg["training"]["data"]["labels"][0]).resolve() == labels.resolve()
    assert not list(tmp_path.glob(".huts*")), "staging folder left behind"
    # the package runs in detect (untrained after one epoch: we check it runs, not what it finds)
    torch_result = geovision.detect(img, pkg / "model.yaml", confidence=0.001)
    assert torch_result.stats.tiles > 0
    # export to ONNX and compare with the torch backend
    r = CliRunner().invoke(main, ["export", str(pkg / "model.yaml")])
    assert r.exit_code == 0, r.stderr
    onnx_path = Path(r.stdout.strip())
    assert onnx_path.is_file()
    onnx_result = geovision.detect(img, onnx_path, confidence=0.001)
    assert len(onnx_result.features) == len(torch_result.features)
    a = np.sort(np.asarray([g.bounds for g in torch_result.features.geometry]).reshape(-1, 4), axis=0)
    b = np.sort(np.asarray([g.bounds for g in onnx_result.features.geometry]).reshape(-1, 4), axis=0)
    np.testing.assert_allclose(a, b, atol=0.1)  # within one 0.1 m pixel


def test_training_config_file_with_flag_overrides(tmp_path):
    scene(tmp_path)
    cfg = train_config(tmp_path, class_field="nope", output="out", epochs=50)
    r = CliRunner().invoke(main, ["train", "--config", str(cfg)])
    assert r.exit_code == 2 and "no field 'nope'" in r.stderr  # the config's own (wrong) field is used
    assert not (tmp_path / "out").exists()
    # flags win over the file: the right field, one epoch, another output folder
    flags = ["--class-field", "kind", "--epochs", "1", "-o", str(tmp_path / "flagged"), "-q"]
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), *flags])
    assert r.exit_code == 0, r.stderr
    package = yaml.safe_load((tmp_path / "flagged" / "model.yaml").read_text())
    assert package["training"]["epochs"] == 1 and package["classes"] == ["hut"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--labels", "missing.gpkg"], "no such file"),
        (["--classes", "car", "--class-field", "kind"], "no usable labels"),
        # settings of other kinds of run are refused, not dropped: a YOLO's learning rate is ultralytics' lr0
        (["--lr", "0.01"], "--lr: not a setting of YOLO box detectors (YOLO networks take ultralytics' lr0"),
        (["--arch", "FPN", "--boundary-px", "2"], "--arch, --boundary-px: not a setting of YOLO box detectors"),
    ],
)
def test_bad_training_input(tmp_path, args, message):
    img, labels = scene(tmp_path)
    base = {"--images": str(img), "--labels": str(labels), "--classes": "hut"}
    extra = dict(zip(args[::2], args[1::2]))
    if extra.get("--labels") == "missing.gpkg":
        extra["--labels"] = str(tmp_path / "missing.gpkg")
    argv = ["train", "detect", "--resolution", "0.1", "--tile-size", "64", "-o", str(tmp_path / "m")]
    for k, v in {**base, **extra}.items():
        argv += [k, v]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


def test_train_segment_cli_to_package_that_detect_runs(tmp_path):
    img, labels = scene(tmp_path)
    pkg = tmp_path / "roofs"
    args = ["train", "segment", "--images", str(img), "--labels", str(labels), "--classes", "hut"]
    args += ["--class-field", "kind", "--resolution", "0.1", "--tile-size", "64", "--epochs", "1", "--batch", "4"]
    args += ["--arch", "Unet", "--encoder", "resnet18", "--encoder-depth", "3", "--val-fraction", "0.25"]
    r = CliRunner().invoke(main, [*args, "-o", str(pkg), "-q"])
    assert r.exit_code == 0, r.stderr
    cfg = yaml.safe_load((pkg / "model.yaml").read_text())
    assert cfg["task"] == "segment" and cfg["backend"] == "smp" and cfg["encoder_depth"] == 3
    assert len(cfg["mean"]) == 3 and "pixel_iou" in cfg["metrics"]
    # the unused deeper ResNet stages are not in the package
    assert (pkg / "weights.pt").stat().st_size < 2_000_000
    mask = tmp_path / "mask.tif"
    result = geovision.detect(img, pkg / "model.yaml", tmp_path / "roofs.gpkg", mask_out=mask)
    assert result.stats.tiles > 0 and mask.is_file()
    import rasterio

    with rasterio.open(mask) as m:
        assert (m.width, m.height) == (256, 256) and m.transform == T
    # fine-tuning starts from the package's weights: at learning rate 0 they come back unchanged
    tuned = tmp_path / "tuned"
    r = CliRunner().invoke(main, [*args, "--weights", str(pkg / "weights.pt"), "--lr", "0", "-o", str(tuned), "-q"])
    assert r.exit_code == 0, r.stderr
    import torch

    a, b = (torch.load(p / "weights.pt", weights_only=True) for p in (pkg, tuned))
    convs = [k for k in a if k.endswith("conv1.weight")]
    assert convs and all(torch.equal(a[k], b[k]) for k in convs)
    made = yaml.safe_load((tuned / "model.yaml").read_text())["training"]["base"]
    assert made.startswith("roofs/weights.pt (sha256 ")
    # and a start that does not fit the network is one clear line
    torch.save({"stem.weight": torch.zeros(1)}, tmp_path / "other.pt")
    r = CliRunner().invoke(main, [*args, "--weights", str(tmp_path / "other.pt"), "-o", str(tmp_path / "x"), "-q"])
    assert r.exit_code == 2 and "not weights of this network (Unet, resnet18, 3 stages" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    yolo = Path(__file__).parent.parent / "configs" / "models" / "trees-fast" / "weights.pt"
    r = CliRunner().invoke(main, [*args, "--weights", str(yolo), "-o", str(tmp_path / "x"), "-q"])
    assert r.exit_code == 2 and "not weights of this network" in r.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("task", ["segment", "instance"])
def test_outline_models_need_polygons(tmp_path, task):
    img = write_raster(tmp_path / "s.tif", squares_image(64, 64, []), transform=T)
    voc = tmp_path / "boxes.xml"
    voc.write_text(
        "<annotation><object><name>hut</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    r = CliRunner().invoke(
        main,
        [
            "train",
            task,
            "--images",
            str(img),
            "--labels",
            str(voc),
            "--classes",
            "hut",
            "--resolution",
            "0.1",
            "--tile-size",
            "64",
            "-o",
            str(tmp_path / "m"),
        ],
    )
    assert r.exit_code == 2 and "polygon labels" in r.stderr


def first_conv(weights: Path) -> np.ndarray:
    import torch

    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    net = ckpt.get("ema") or ckpt["model"]
    return next(iter(net.state_dict().values())).float().numpy()


def test_training_from_weights_starts_from_them(tmp_path):
    """`weights:` fine-tunes the given model: with a learning rate of zero it comes back unchanged.

    ultralytics rebuilds the network from its YAML (random weights) when told
    ``pretrained=False``, which once made every fine-tuning run a run from scratch.
    """
    scene(tmp_path)
    start = Path(__file__).parent.parent / "configs" / "models" / "trees-fast" / "weights.pt"
    options = {"optimizer": "SGD", "lr0": 0.0, "warmup_bias_lr": 0.0, "warmup_epochs": 0}
    cfg = train_config(
        tmp_path, epochs=1, batch=4, val_fraction=0.25, weights=str(start), augment="none", options=options
    )
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "-q"])
    assert r.exit_code == 0, r.stderr
    tuned = first_conv(tmp_path / "tuned" / "weights.pt")
    np.testing.assert_allclose(tuned, first_conv(start), atol=1e-3)
    assert np.abs(first_conv(start)).max() > 0.01  # a real filter, not zeros that any start would match
    made = yaml.safe_load((tmp_path / "tuned" / "model.yaml").read_text())["training"]
    assert made["epochs"] == 1 and made["base"].startswith("trees-fast/weights.pt (sha256 ")


def test_a_box_detector_starts_an_instance_segmenter(tmp_path):
    """Detector weights start a YOLO-seg run: backbone, neck and box head carry over, a mask head is added."""
    img, _ = scene(tmp_path)
    start = Path(__file__).parent.parent / "configs" / "models" / "trees-fast" / "weights.pt"
    options = {"optimizer": "SGD", "lr0": 0.0, "warmup_bias_lr": 0.0, "warmup_epochs": 0}
    cfg = train_config(
        tmp_path,
        task="instance",
        epochs=1,
        batch=4,
        val_fraction=0.25,
        weights=str(start),
        augment="none",
        options=options,
    )
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "-q"])
    assert r.exit_code == 0, r.stderr
    np.testing.assert_allclose(first_conv(tmp_path / "tuned" / "weights.pt"), first_conv(start), atol=1e-3)
    made = yaml.safe_load((tmp_path / "tuned" / "model.yaml").read_text())
    assert made["task"] == "instance" and made["training"]["base"].startswith("trees-fast/weights.pt (sha256 ")
    result = geovision.detect(img, tmp_path / "tuned" / "model.yaml", confidence=0.0001)
    assert result.stats.tiles > 0
    assert all(g.geom_type == "Polygon" for g in result.features.geometry)


SAMPLES = Path(__file__).parent.parent / "sample_tiles"


def test_fine_tuning_a_named_model_takes_its_settings_and_a_time_bound(tmp_path):
    """`--weights trees`: the model's weights, resolution, tile size and thresholds, a small step, 8 minutes."""
    raw = {"weights": "trees", "images": ["a.tif"], "labels": ["a.xml"], "output": str(tmp_path / "m")}
    spec = spec_from_mapping(raw)
    trees = geovision.resolve_model("trees")
    assert spec.task == "detect" and spec.classes == ("tree",) and spec.weights == trees.weights
    assert (spec.resolution, spec.tile_size, spec.overlap) == (trees.resolution_m, trees.tile_size, trees.overlap)
    # a box detector's confidence is chosen on its validation chips; trees' stays if they hold too few boxes
    assert (spec.confidence, spec.start_confidence, spec.iou) == (None, trees.confidence, trees.iou)
    assert spec.time == 8.0 and spec.options["optimizer"] == "AdamW" and spec.options["lr0"] == 0.001
    # what the user gives wins; --epochs alone sets no time bound
    spec = spec_from_mapping({**raw, "tile_size": 320, "epochs": 5, "options": {"lr0": 0.01}})
    assert (spec.tile_size, spec.epochs, spec.time, spec.options) == (320, 5, None, {"lr0": 0.01})
    assert spec_from_mapping({**raw, "time": "90s"}).time == 1.5
    assert spec_from_mapping({**raw, "time": "1.5h"}).time == 90
    assert spec_from_mapping({**raw, "time": 12}).time == 12
    with pytest.raises(geovision.TrainingError, match="`detector`: not a setting of YOLO-seg instance segmenters"):
        spec_from_mapping({**raw, "weights": None, "task": "instance", "classes": ["x"], "detector": "centres"})
    with pytest.raises(geovision.TrainingError, match="`model_size`, `options`: not a setting of segmenters"):
        spec_from_mapping({**raw, "weights": None, "task": "segment", "classes": ["x"], "model_size": "s",
                           "options": {"lr0": 0.1}})  # fmt: skip
    # a start model's own settings are defaults, never refused: a segmenter's outline options to a segmenter
    assert spec_from_mapping({**raw, "weights": "buildings-unet"}).vectorize
    for bad in ("soon", "0m", "-1h"):
        with pytest.raises(geovision.errors.TrainingError, match="time"):
            spec_from_mapping({**raw, "time": bad})


def test_bad_start_model_or_time_is_one_line(tmp_path):
    args = ["train", "detect", "--images", str(SAMPLES / "OSBS_029.tif"), "--labels", str(SAMPLES / "OSBS_029.csv")]
    r = CliRunner().invoke(main, [*args, "--weights", "no-such-model", "-o", str(tmp_path / "m")])
    assert r.exit_code == 2 and "--weights: unknown model 'no-such-model'; known models:" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(main, [*args, "--weights", "trees", "--time", "soon", "-o", str(tmp_path / "m")])
    assert r.exit_code == 2 and "time 'soon': give a duration such as 90s, 10m or 1.5h" in r.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("settings", "trainer", "backend", "words"),
    [
        ({"task": "detect"}, "YoloTrainer", "yolo", "YOLO11n trained by geovision"),
        ({"task": "instance", "model_size": "s"}, "YoloTrainer", "yolo", "YOLO11s-seg trained by geovision"),
        ({"task": "segment", "arch": "FPN"}, "SegmenterTrainer", "smp", "FPN (resnet34) trained by geovision"),
        ({"task": "detect", "detector": "centres"}, "CentreTrainer", "smp", "centre heatmap on Unet (resnet34)"),
    ],
)
def test_every_kind_of_run_has_its_trainer_from_the_backend_registry(tmp_path, settings, trainer, backend, words):
    """train() hands each kind of run to the trainer the registry names for it; the skeleton's model
    config is that kind's (backend, overlap, network words, smp settings)."""
    from geovision.training.run import Trainer, trainer_for

    base = {"images": ["a.tif"], "labels": ["a.gpkg"], "classes": ["x"], "output": str(tmp_path / "m")}
    spec = spec_from_mapping({**base, "resolution": 0.5, "tile_size": 256, **settings})
    chosen = trainer_for(spec)
    assert isinstance(chosen, Trainer) and type(chosen).__name__ == trainer
    cfg = chosen.config()
    assert (cfg.backend, cfg.task, cfg.resolution_m, cfg.tile_size) == (backend, settings["task"], 0.5, 256)
    assert cfg.description.startswith(words)
    assert cfg.overlap == (64 if settings["task"] == "segment" else 25)
    if backend == "smp":
        assert (cfg.smp.arch, cfg.smp.encoder, cfg.smp.activation) == (
            settings.get("arch", "Unet"),
            "resnet34",
            "sigmoid",
        )


def test_fine_tuning_trees_on_one_small_plot(tmp_path):
    """One 400 px plot with crowns: a single block, so nothing to hold out. It trains (the best epoch chosen on
    its training chips, said so) instead of stopping with 'no validation chips', and the tuned package detects."""
    tuned = tmp_path / "my-trees"
    args = ["train", "detect", "--weights", "trees", "--images", str(SAMPLES / "OSBS_029.tif")]
    args += ["--labels", str(SAMPLES / "OSBS_029.csv"), "--classes", "tree", "--epochs", "1", "-o", str(tuned)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.stderr
    assert "the best epoch is chosen on the training chips" in r.stderr
    cfg = yaml.safe_load((tuned / "model.yaml").read_text())
    trees = yaml.safe_load((SAMPLES.parent / "configs" / "models" / "trees" / "model.yaml").read_text())
    assert (cfg["resolution"], cfg["tile_size"]) == (0.1, 416)
    assert cfg["confidence"] == cfg["metrics"]["at_confidence"] and 0.05 <= cfg["confidence"] <= 0.6
    assert f"confidence: {cfg['confidence']:g}, where box F1 on the validation chips is best" in r.stderr
    assert cfg["training"]["base"] == f"trees/weights.pt (sha256 {trees['sha256']})"
    assert cfg["training"]["data"]["chips_val"] == 0 and cfg["training"]["epochs"] == 1
    found = geovision.detect(SAMPLES / "OSBS_029.tif", tuned, tmp_path / "t.gpkg").features
    assert len(found) > 10 and set(found["class"]) == {"tree"}


def test_a_threshold_is_not_chosen_on_a_handful_of_boxes(tmp_path):
    """Five labelled huts: the best of twelve thresholds on them is luck, so the start model's stays."""
    img, labels = scene(tmp_path)
    args = ["train", "detect", "--weights", "trees-fast", "--images", str(img), "--labels", str(labels)]
    r = CliRunner().invoke(main, [*args, "--classes", "hut", "--epochs", "1", "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.stderr
    kept = geovision.resolve_model("trees-fast").confidence
    assert f"confidence: {kept:g}, as it was: " in r.stderr and "too few to choose one on" in r.stderr
    cfg = yaml.safe_load((tmp_path / "m" / "model.yaml").read_text())
    assert cfg["confidence"] == kept and cfg["metrics"]["at_confidence"] in THRESHOLDS


def test_fine_tuning_reads_the_objects_at_the_size_the_start_model_learned(tmp_path):
    """A package records how large its labelled objects were; fine-tuned on objects twice that size, a
    run reads the imagery at twice the metres per pixel (the oaks a conifer model would cut into
    pieces), unless a resolution is given."""
    img, labels = scene(tmp_path)
    start = tmp_path / "start"
    args = ["--classes", "hut", "--tile-size", "64", "--batch", "4", "--epochs", "1", "--val-fraction", "0.25", "-q"]
    r = CliRunner().invoke(main, ["train", "detect", "--images", str(img), "--labels", str(labels), *args,
                                  "--resolution", "0.1", "-o", str(start)])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    sides = [((x2 - x1) * (y2 - y1)) ** 0.5 * 0.1 for x1, y1, x2, y2 in SQUARES]
    learned = yaml.safe_load((start / "model.yaml").read_text())["training"]["data"]["object_size_m"]
    assert learned == pytest.approx(np.median(sides), abs=0.01)  # 3.0 m: the labels' median side
    # the same huts twice as large, on the same 0.1 m pixels
    big = [tuple(2 * v for v in s) for s in SQUARES]
    img2 = write_raster(tmp_path / "big.tif", squares_image(512, 512, big), transform=T)
    polys = [shapely.box(*(T @ (x1, y2)), *(T @ (x2, y1))) for x1, y1, x2, y2 in big]
    gpd.GeoDataFrame({"class": ["hut"] * 5}, geometry=polys, crs="EPSG:32617").to_file(tmp_path / "big.gpkg")
    tune = ["train", "detect", "--weights", str(start), "--images", str(img2), "--labels", str(tmp_path / "big.gpkg")]
    r = CliRunner().invoke(main, [*tune, *args[:-1], "-o", str(tmp_path / "tuned")])
    assert r.exit_code == 0, r.stderr
    assert "reading at 0.2 m, not 0.1, so that they look the size it learned (give --resolution to choose)" in r.stderr
    tuned = yaml.safe_load((tmp_path / "tuned" / "model.yaml").read_text())
    assert tuned["resolution"] == 0.2 and tuned["training"]["data"]["object_size_m"] == pytest.approx(2 * learned, 0.01)
    given = {"weights": str(start), "images": [str(img2)], "labels": ["big.gpkg"], "output": "m", "resolution": 0.1}
    assert spec_from_mapping(given).start_object_size_m is None  # a resolution given is kept
    assert spec_from_mapping({**given, "resolution": None}).start_object_size_m == learned
    assert matched_resolution(0.1, 4.0, 4.9) == 0.1  # within 1.25x: as it was
    assert matched_resolution(0.1, 4.0, 2.0) == 0.1  # smaller: never read finer
    assert matched_resolution(0.1, 4.0, 40.0) == 0.4  # at most four times coarser


def test_an_image_without_georeference_trains_at_the_resolution_given(tmp_path):
    """A PNG with Pascal VOC boxes and no ``image_resolution``: its pixels are taken as the model's
    (``--resolution``), and the objects' recorded size follows from that."""
    Image.fromarray(np.moveaxis(squares_image(256, 256, SQUARES), 0, -1)).save(tmp_path / "plain.png")
    boxes = "".join(
        f"<object><name>hut</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        "</bndbox></object>"
        for x1, y1, x2, y2 in SQUARES
    )
    (tmp_path / "plain.xml").write_text(f"<annotation>{boxes}</annotation>")
    args = ["train", "detect", "--images", str(tmp_path / "plain.png"), "--labels", str(tmp_path / "plain.xml")]
    args += ["--classes", "hut", "--tile-size", "64", "--batch", "4", "--epochs", "1", "--resolution", "0.1"]
    r = CliRunner().invoke(main, [*args, "-q", "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.stderr
    cfg = yaml.safe_load((tmp_path / "m" / "model.yaml").read_text())
    sides = [((x2 - x1) * (y2 - y1)) ** 0.5 * 0.1 for x1, y1, x2, y2 in SQUARES]
    assert cfg["resolution"] == 0.1
    assert cfg["training"]["data"]["object_size_m"] == pytest.approx(np.median(sides), abs=0.01)
    r = CliRunner().invoke(main, [*args[:-2], "-q", "-o", str(tmp_path / "n")])  # no resolution: nothing to go by
    assert r.exit_code == 2 and "plain.png: no georeference; give --resolution" in r.stderr
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_time_bounds_a_training_run(tmp_path, task):
    """`--time` ends the run with the epochs that fit (one or two here), not the 50 asked for."""
    img, labels = scene(tmp_path)
    args = ["train", task, "--images", str(img), "--labels", str(labels), "--classes", "hut", "--resolution", "0.1"]
    args += ["--tile-size", "64", "--batch", "4", "--epochs", "50", "--time", "1s", "--val-fraction", "0.25"]
    if task == "segment":
        args += ["--encoder", "resnet18", "--encoder-depth", "3"]
    r = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "m"), "-q"])
    assert r.exit_code == 0, r.stderr
    assert 1 <= yaml.safe_load((tmp_path / "m" / "model.yaml").read_text())["training"]["epochs"] <= 3


def test_the_learning_rate_rises_then_falls_to_nearly_nothing():
    from geovision.training.smp import one_cycle

    shares = [one_cycle(k / 100) for k in range(101)]
    top = int(np.argmax(shares))
    assert shares[0] == pytest.approx(0.04) and top == 30 and shares[top] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(shares[:top], shares[1 : top + 1]))
    assert all(a >= b for a, b in zip(shares[top:], shares[top + 1 :])) and shares[-1] == pytest.approx(1e-3)
