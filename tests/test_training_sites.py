"""Training from real data layouts: datasets by site, folders of per-plot labels, held-out sites,
chips without padding, and segmenters that learn outlines so touching buildings stay apart."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import yaml
from click.testing import CliRunner

import geovision
from geovision.backends.smp import SmpSegmenter, network_outputs
from geovision.cli.main import main
from geovision.config import SmpOptions
from geovision.errors import TrainingError
from geovision.labels import LabelReport, read_vector_shapes
from geovision.training import load_train_config, spec_from_mapping, without_sites
from geovision.training.chips import (
    IGNORE,
    ChipOptions,
    chip_detection_dataset,
    chip_segmentation_dataset,
    chip_starts,
    val_blocks,
)
from geovision.training.smp import pixel_scores
from tests.conftest import UTM_10CM, squares_image, write_raster

torch = pytest.importorskip("torch")  # every test here needs it

ROOT = Path(__file__).resolve().parents[1]
VOC = (
    "<annotation><object><name>Tree</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax>"
    "</bndbox></object></annotation>"
)


def plots(tmp_path: Path) -> Path:
    """Two sites of plots; site b has a plot without labels. Returns a training config using them."""
    for site, names in {"a": ["p1", "p2"], "b": ["q1", "q2", "q3"]}.items():
        (tmp_path / site / "annotations").mkdir(parents=True)
        for name in names:
            write_raster(tmp_path / site / f"{name}.tif", squares_image(64, 64, [(10, 10, 30, 30)]))
            if name != "q3":
                (tmp_path / site / "annotations" / f"{name}.xml").write_text(VOC.format(10, 10, 30, 30))
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "task": "detect",
                "datasets": [
                    {"site": "a", "images": "a/*.tif", "labels": "a/annotations"},
                    {"site": "b", "images": "b/*.tif", "labels": "b/annotations"},
                ],
                "classes": ["tree"],
                "resolution": 0.1,
                "tile_size": 64,
                "output": "out",
            }
        )
    )
    return cfg


def test_datasets_expand_by_site_and_match_labels_by_name(tmp_path):
    spec = spec_from_mapping(load_train_config(plots(tmp_path)))
    assert [p.name for p in spec.images] == ["p1.tif", "p2.tif", "q1.tif", "q2.tif"]  # q3 has no labels
    assert [p.name for p in spec.labels] == ["p1.xml", "p2.xml", "q1.xml", "q2.xml"]
    assert spec.sites == ("a", "a", "b", "b")
    held = without_sites(spec, ["b"], tmp_path / "fold")
    assert [p.name for p in held.images] == ["p1.tif", "p2.tif"] and held.sites == ("a", "a")
    with pytest.raises(TrainingError, match="no site 'c'"):
        without_sites(spec, ["c"], tmp_path / "fold")


def test_a_dataset_matching_no_image_is_an_error(tmp_path):
    cfg = plots(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["datasets"][1]["images"] = "b/*.png"
    cfg.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(main, ["train", "--config", str(cfg)])
    assert r.exit_code == 2 and "no image matches" in r.stderr and "Traceback" not in r.stderr


def test_a_datasets_labelled_area_follows_its_images_into_a_fold(tmp_path):
    cfg = plots(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["datasets"][1]["area"] = "b/mapped.gpkg"  # site b's labels are complete only there
    cfg.write_text(yaml.safe_dump(raw))
    spec = spec_from_mapping(load_train_config(cfg))
    assert spec.areas == (None, None, tmp_path / "b" / "mapped.gpkg", tmp_path / "b" / "mapped.gpkg")
    assert without_sites(spec, ["a"], tmp_path / "fold").areas == spec.areas[2:]
    assert without_sites(spec, ["b"], tmp_path / "fold").areas is None
    with pytest.raises(TrainingError, match="one per image \\(4\\), not 3"):
        spec_from_mapping({**load_train_config(cfg), "areas": ["x.gpkg"] * 3})


@pytest.mark.parametrize(
    "length, tile, stride", [(400, 320, 160), (400, 416, 208), (2299, 416, 208), (64, 64, 32), (1000, 256, 100)]
)
def test_chips_cover_the_image_without_padding(length, tile, stride):
    starts = chip_starts(length, tile, stride)
    assert starts[0] == 0 and all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))
    assert starts[-1] + tile == max(length, tile)  # the last chip ends at the edge, none runs past it
    assert set(range(0, length - tile + 1, tile)) <= set(starts)  # a chip on each validation block


def test_small_plots_go_to_validation_whole_at_the_given_rate():
    import random

    rng = random.Random(0)
    held = [bool(val_blocks([(0, 0)], 0.2, rng)) for _ in range(2000)]
    assert 0.15 < np.mean(held) < 0.25
    assert val_blocks([(0, 0)], 0.0, rng) == set()


PAIRS = [(8, 8, 24, 40), (24, 8, 44, 40)]


def touching_houses(tmp_path: Path) -> tuple[Path, Path]:
    """Pairs of houses sharing a wall in each 64 px quadrant of a 128 px raster, and no data in a corner."""
    houses = [(x1 + dx, y1 + dy, x2 + dx, y2 + dy) for dx in (0, 64) for dy in (0, 64) for x1, y1, x2, y2 in PAIRS]
    img = squares_image(128, 128, houses)
    img[:, 48:64, 48:64] = 0
    path = write_raster(tmp_path / "houses.tif", img, nodata=0)
    t = UTM_10CM
    polys = [shapely.box(*(t @ (x1, y2)), *(t @ (x2, y1))) for x1, y1, x2, y2 in houses]
    labels = tmp_path / "houses.geojson"
    gpd.GeoDataFrame(geometry=polys, crs="EPSG:32617").to_crs("EPSG:4326").to_file(labels)
    return path, labels


def test_masks_mark_outlines_between_touching_houses_and_ignore_nodata(tmp_path):
    img, labels = touching_houses(tmp_path)
    items = read_vector_shapes(labels, [img], ["building"], LabelReport())
    opts = ChipOptions(tile_size=64, resolution_m=0.1, val_fraction=0, stride=64)
    chips = chip_segmentation_dataset(items, opts, 1.0, 1)
    assert len(chips.train_masks) == 4
    mask = chips.train_masks[0]  # the top-left quadrant
    assert mask[24, 15] == 1 and mask[24, 34] == 1  # inside each house
    assert (mask[12:36, 23:25] == 2).all()  # the shared wall is outline, so the houses do not touch
    assert mask[2, 2] == 0 and (mask[50:, 50:] == IGNORE).all() and (mask[:48, 48:] != IGNORE).all()
    # scores leave no data out and count the outline as background
    pred = np.where(mask == 2, 1, mask)
    assert pixel_scores(pred, mask, 1)["iou"] < 1.0
    assert pixel_scores(np.where(mask == IGNORE, 1, np.where(mask == 2, 0, mask)), mask, 1)["iou"] == 1.0


def test_a_boundary_model_hands_on_background_and_buildings_only(tmp_path):
    cfg = geovision.ModelConfig(
        name="b",
        task="segment",
        backend="smp",
        weights=tmp_path / "w.pt",
        classes=("building",),
        tile_size=64,
        overlap=16,
        resolution_m=0.3,
        smp=SmpOptions(arch="Unet", encoder="resnet18", encoder_depth=3, decoder_channels=(64, 32, 16), boundary=True),
    )
    assert network_outputs(cfg) == 3
    from geovision.backends.smp import build_network

    torch.save({k: v.half() for k, v in build_network(cfg).state_dict().items()}, cfg.weights)
    probs = SmpSegmenter(cfg).segment([np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)])
    assert probs.shape == (1, 2, 64, 64)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_train_a_boundary_segmenter_and_detect_separate_houses(tmp_path):
    img, labels = touching_houses(tmp_path)
    pkg = tmp_path / "houses"
    args = ["train", "segment", "--images", str(img), "--labels", str(labels), "--classes", "building"]
    args += ["--resolution", "0.1", "--tile-size", "64", "--epochs", "1", "--batch", "2", "--encoder", "resnet18"]
    args += ["--encoder-depth", "3", "--val-fraction", "0.25", "--boundary-px", "1", "-o", str(pkg), "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.stderr
    cfg = yaml.safe_load((pkg / "model.yaml").read_text())
    assert cfg["boundary"] is True and cfg["activation"] == "softmax"
    assert cfg["vectorize"]["grow_m"] == pytest.approx(0.1)
    result = geovision.detect(img, pkg / "model.yaml", confidence=0.01)
    with rasterio.open(img) as ds:
        footprint = shapely.box(*ds.bounds)
    assert len(result.features) >= 1 and all(footprint.contains(g) for g in result.features.geometry)


def test_instance_chips_carry_each_outline_cut_to_the_chip(tmp_path):
    img, labels = touching_houses(tmp_path)
    items = read_vector_shapes(labels, [img], ["building"], LabelReport())
    out = tmp_path / "chips"
    opts = ChipOptions(tile_size=64, resolution_m=0.1, val_fraction=0, stride=32, max_empty_share=0.0)
    stats = chip_detection_dataset(items, out, opts, ["building"])
    assert stats.train > 0
    corner = (out / "labels" / "train" / "000_houses_0_0.txt").read_text().splitlines()
    outlines = []
    for line in corner:  # class, then x y pairs of the outline in 0-1 of the chip
        c, *xy = line.split()
        outlines.append(shapely.Polygon(np.asarray(xy, float).reshape(-1, 2) * 64))
        assert c == "0"
    # the two houses sharing a wall are two outlines, each the house's rectangle
    expected = [shapely.box(x1, y1, x2, y2) for x1, y1, x2, y2 in PAIRS]
    assert len(outlines) == 2
    for want in expected:
        assert max(want.intersection(o).area / want.union(o).area for o in outlines) > 0.97
    # the transposed copy carries the transposed outlines
    flipped = (out / "labels" / "train" / "000_houses_0_0_T.txt").read_text().splitlines()
    got = sorted(shapely.Polygon(np.asarray(line.split()[1:], float).reshape(-1, 2) * 64).bounds for line in flipped)
    assert np.allclose(got, sorted((y1, x1, y2, x2) for x1, y1, x2, y2 in PAIRS), atol=0.2)
    # a chip that cuts a house keeps the part it sees when enough of it is visible
    cut = (out / "labels" / "train" / "000_houses_0_32.txt").read_text().splitlines()
    parts = [shapely.Polygon(np.asarray(line.split()[1:], float).reshape(-1, 2) * 64) for line in cut]
    assert all(0 <= v <= 64 for p in parts for v in p.bounds)
    assert any(abs(p.bounds[0] - 0) < 0.1 and abs(p.bounds[2] - 12) < 0.1 for p in parts)  # house 24-44 seen from 32


def test_train_an_instance_segmenter_and_detect_outlines(tmp_path):
    img, labels = touching_houses(tmp_path)
    pkg = tmp_path / "houses"
    args = ["train", "instance", "--images", str(img), "--labels", str(labels), "--classes", "building"]
    args += ["--resolution", "0.1", "--tile-size", "64", "--epochs", "1", "--batch", "4", "--val-fraction", "0.25"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = CliRunner().invoke(main, [*args, "-o", str(pkg), "-q"])
        # ultralytics sets torch to cores - 1 threads on the CPU (one core of two); training keeps ours
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.stderr
    cfg = yaml.safe_load((pkg / "model.yaml").read_text())
    assert cfg["task"] == "instance" and cfg["backend"] == "yolo" and "mAP50" in cfg["metrics"]
    assert cfg["vectorize"]["simplify_m"] == pytest.approx(0.1)
    # a segmentation head: the package runs as an instance segmenter (untrained: we check it runs)
    result = geovision.detect(img, pkg / "model.yaml", confidence=0.0001)
    assert result.stats.tiles > 0
    assert all(g.geom_type == "Polygon" for g in result.features.geometry)


def test_instance_chips_take_self_crossing_footprints(tmp_path):
    """OpenStreetMap has footprints that cross themselves: they are repaired, not a crash."""
    img, _ = touching_houses(tmp_path)
    t = UTM_10CM
    bowtie = shapely.Polygon([t @ (70, 70), t @ (100, 100), t @ (100, 70), t @ (70, 100)])
    assert not bowtie.is_valid
    labels = tmp_path / "bowtie.geojson"
    gpd.GeoDataFrame(geometry=[bowtie, shapely.box(*(t @ (8, 40)), *(t @ (24, 8)))], crs="EPSG:32617").to_file(labels)
    items = read_vector_shapes(labels, [img], ["building"], LabelReport())
    opts = ChipOptions(tile_size=64, resolution_m=0.1, val_fraction=0, stride=64, max_empty_share=0.0)
    stats = chip_detection_dataset(items, tmp_path / "chips", opts, ["building"])
    lines = (tmp_path / "chips" / "labels" / "train" / "000_houses_64_64.txt").read_text().splitlines()
    assert stats.train == 4 and len(lines) == 1  # the bowtie's larger triangle (both are equal: either)
    xy = np.asarray(lines[0].split()[1:], float).reshape(-1, 2) * 64
    assert shapely.Polygon(xy).area == pytest.approx(15 * 30 / 2, rel=0.02)


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data").is_dir(), reason="needs the project's shared data")
def test_every_training_config_reads_and_each_stage_starts_from_another_stage():
    configs = sorted((ROOT / "configs" / "training").glob("*.yaml"))
    specs = {p.stem: spec_from_mapping(load_train_config(p)) for p in configs}
    written = {s.output.resolve() / "weights.pt": name for name, s in specs.items()}
    for name, spec in specs.items():
        assert spec.images and all(p.is_file() for p in (*spec.images, *spec.labels)), name
        if spec.weights is not None:  # a second stage: the weights are what a first stage writes
            assert written.get(spec.weights.resolve()) not in (None, name), name
        package = ROOT / "configs" / "models" / name
        if package.is_dir():  # a shipped model is written by the config of its name
            assert spec.output.resolve() == package.resolve(), name
    shipped = {p.name for p in (ROOT / "configs/models").iterdir() if (p / "model.yaml").is_file()}
    assert shipped <= specs.keys()
