"""Shared fixtures: small rasters with known objects, and a fake detector.

The fake detector finds bright blobs by connected components, so it behaves
like a real detector at tile edges (a blob cut by the edge gives a cut box)
while being exact, which lets the tests check geometry to the pixel.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from scipy import ndimage

from geovision.backends import Detections
from geovision.config import ModelConfig

os.environ.setdefault("YOLO_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TREES = ROOT / "sample_tiles" / "OSBS_029.tif"
CACHE_KEY = pytest.StashKey[Path]()


class BlobDetector:
    """Boxes around pixels brighter than 128 in channel 0; records what it was given."""

    device = "cpu"

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []
        self.batches: list[int] = []

    def fit_batch(self, base: int) -> int:
        return base

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, iou: float | None = None
    ) -> list[Detections]:
        out = []
        self.batches.append(len(images))
        for img in images:
            self.seen.append(img.copy())
            labels, n = ndimage.label(img[..., 0] > 128)
            boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)]
            b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            out.append(Detections(b, np.full(n, 0.9, np.float32), np.zeros(n, np.int64)))
        return out


def left_half_only(images, found):
    """Of each tile's objects, those whose box centre is in the tile's left half: a one-sided model
    (what a mirror image of the tile shows it, flip test-time augmentation recovers)."""
    return [
        d.take(np.flatnonzero((d.boxes[:, 0] + d.boxes[:, 2]) / 2 < im.shape[1] / 2)) for im, d in zip(images, found)
    ]


def fake_config(tile_size: int = 64, overlap: int = 16, resolution_m: float | None = 0.1, **kw) -> ModelConfig:
    return ModelConfig(
        name="blobs",
        task="detect",
        backend="fake",
        weights=Path("/nonexistent"),
        classes=("blob",),
        tile_size=tile_size,
        overlap=overlap,
        resolution_m=resolution_m,
        batch_size=3,
        **kw,
    )


UTM_10CM = Affine(0.1, 0, 500000, 0, -0.1, 4000000)


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32617",
    transform: Affine = UTM_10CM,
    nodata: float | None = None,
    **profile,
) -> Path:
    """Write (bands, rows, cols) ``data`` as a GeoTIFF."""
    if data.ndim == 2:
        data = data[None]
    prof = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    )
    prof.update(profile)
    if crs is None:
        prof.pop("crs")
        prof.pop("transform")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # rasters without CRS on purpose
        with rasterio.open(path, "w", **prof) as ds:
            ds.write(data)
    return path


def tiled_copy(path: Path, src: Path, reps: int) -> Path:
    """``src`` repeated reps x reps times: a larger real raster, for a run long enough to cancel."""
    with rasterio.open(src) as ds:
        data, profile = ds.read(), ds.profile
    profile.update(width=ds.width * reps, height=ds.height * reps, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as out:
        out.write(np.tile(data, (1, reps, reps)))
    return path


def damaged_raster(path: Path, height: int, width: int, block: tuple[int, int]) -> Path:
    """A random tiled, compressed GeoTIFF whose block (row, column) of 256 px has its deflate stream
    destroyed: GDAL opens the file and fails only when that block is read."""
    data = np.random.default_rng(0).integers(0, 255, (3, height, width), dtype=np.uint8)
    write_raster(path, data, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{block[1]}_{block[0]}", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 2000] = b"\xff" * 2000
    path.write_bytes(bytes(raw))
    return path


def squares_image(height: int, width: int, squares: Sequence[tuple[int, int, int, int]], bands: int = 3) -> np.ndarray:
    """uint8 image, dark grey background with white squares (x1, y1, x2, y2) in pixels."""
    img = np.full((bands, height, width), 40, np.uint8)
    for x1, y1, x2, y2 in squares:
        img[:, y1:y2, x1:x2] = 230
    return img


@pytest.fixture
def blob_detector() -> BlobDetector:
    return BlobDetector()


class BrightSegmenter:
    """Probability of class 1 = 1 where channel 0 is bright, else 0; records tiles seen."""

    device = "cpu"

    def __init__(self) -> None:
        self.seen = 0

    def fit_batch(self, base: int) -> int:
        return base

    def segment(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self.seen += len(images)
        fg = np.stack([(i[..., 0] > 128).astype(np.float32) for i in images])
        return np.stack([1 - fg, fg], axis=1)


def fake_seg_config(tile_size: int = 64, overlap: int = 16, resolution_m: float | None = 0.1) -> ModelConfig:
    return ModelConfig(
        name="roofs",
        task="segment",
        backend="fake",
        weights=Path("/nonexistent"),
        classes=("roof",),
        tile_size=tile_size,
        overlap=overlap,
        resolution_m=resolution_m,
        batch_size=4,
        confidence=0.5,
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where CUDA and torch are (asked without importing torch, so that
    the suite collects on a core install)."""
    from geovision.backends.device import cuda_present
    from geovision.errors import installed

    if cuda_present() and installed("torch"):
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    """Models exported to ONNX on first use go to a cache of this run's own, not the user's.

    Made here, not on import: tests that import helpers from ``tests.conftest``
    load this file a second time under that name, and each import would leave
    a folder behind.
    """
    config.stash[CACHE_KEY] = Path(tempfile.mkdtemp(prefix="geovision-test-cache-"))
    os.environ["GEOVISION_CACHE"] = str(config.stash[CACHE_KEY])


def pytest_unconfigure(config):
    if CACHE_KEY in config.stash:
        shutil.rmtree(config.stash[CACHE_KEY], ignore_errors=True)


def without_onnx(model: str, folder: Path) -> Path:
    """A YAML in ``folder`` for shipped ``model`` without its packaged ONNX: runs export it to the cache."""
    src = ROOT / "configs" / "models" / model / "model.yaml"
    cfg = yaml.safe_load(src.read_text())
    cfg.pop("onnx", None), cfg.pop("onnx_sha256", None)
    cfg["weights"] = str((src.parent / cfg["weights"]).resolve())
    out = folder / f"{model}.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out
