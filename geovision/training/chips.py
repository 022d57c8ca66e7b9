"""Cutting training chips from rasters and labels.

Chips are cut with the same reader, resampling and normalisation as
inference (:mod:`geovision.raster`), so the model sees at training time the
very pixels it will see in ``geovision detect``. The validation split is
spatial: whole blocks of each raster are held out, and a chip that touches a
held-out block and a training block is dropped, so no pixel is in both.
Detector chips are written as a YOLO dataset (boxes, or outline polygons for
instance segmenters); segmenter chips stay in memory with masks rasterised by
``rasterio.features.rasterize``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
import yaml
from rasterio import features
from shapely import affinity

from geovision.geometry import largest_polygons, polygonal
from geovision.labels import ImageLabels, ImageShapes
from geovision.raster import Normalization, ReadPlan, TileData, open_raster, plan_read, read_tile
from geovision.tiling import Tile


@dataclass(frozen=True)
class ChipOptions:
    """How chips are cut; sizes in model-grid pixels."""

    tile_size: int
    resolution_m: float | None
    in_channels: int = 3
    bands: tuple[int, ...] | None = None
    normalization: Normalization = field(default_factory=Normalization)
    accept_grayscale: bool = False
    stride: int | None = None
    val_fraction: float = 0.2
    min_visible: float = 0.4
    max_empty_share: float = 0.1
    native_resolution_m: float | None = None
    seed: int = 0


@dataclass
class SplitLog:
    """Where the validation blocks are, and how many chips straddled the split and were dropped."""

    val_regions: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)
    dropped_straddling: int = 0


@dataclass
class ChipSet:
    """Counts of what chipping wrote, and where."""

    #: the dataset's folder (images/, labels/, data.yaml)
    folder: Path
    train: int = 0
    val: int = 0
    boxes_train: int = 0
    boxes_val: int = 0
    #: labels in no written chip: on no data, only in chips dropped at the split's edges, or too little
    #: of each on imagery
    labels_in_no_chip: int = 0
    split: SplitLog = field(default_factory=SplitLog)

    @property
    def labelled_val(self) -> int:
        """Labels in the validation chips: what the best epoch is chosen on."""
        return self.boxes_val

    def describe(self) -> str:
        return f"{self.train} train ({self.boxes_train} boxes), {self.val} validation ({self.boxes_val} boxes)"

    def record(self) -> dict[str, int]:
        """The counts a package records."""
        counts = {"chips_train": self.train, "chips_val": self.val, "val_boxes": self.boxes_val}
        return {**counts, "labels_in_no_chip": self.labels_in_no_chip}

    def validating_on_training(self) -> ChipSet:
        """The dataset with its training chips as validation too (nothing held out holds a label)."""
        data = yaml.safe_load((self.folder / "data.yaml").read_text())
        data["val"] = data["train"]
        (self.folder / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        return self


def chip_plan(ds: rasterio.io.DatasetReader, opts: ChipOptions) -> ReadPlan:
    """The read plan for chipping: inference's, accepting rasters without georeference."""
    return plan_read(
        ds,
        opts.resolution_m,
        opts.in_channels,
        opts.bands,
        opts.normalization,
        opts.accept_grayscale,
        pixel_coords=True,
        native_resolution_m=opts.native_resolution_m,
    )


def cut_chips(
    ds: rasterio.io.DatasetReader,
    plan: ReadPlan,
    label_centres: np.ndarray,
    opts: ChipOptions,
    rng: random.Random,
    log: SplitLog,
    area: Any = None,
) -> Iterator[tuple[str, TileData]]:
    """Chips of one raster as ('train' | 'val', tile), the split by held-out blocks.

    ``label_centres`` (n, 2) are label centres in model-grid pixels: held-out
    blocks are drawn among blocks holding labels, or validation would
    measure nothing. Outside ``area`` (a polygon in model-grid pixels, where
    the labels are complete), pixels are no data. Chips touching both
    splits, and chips without a valid pixel, are left out.
    """
    t = opts.tile_size
    blocks = SplitBlocks(plan.width, plan.height, t)
    centres = np.asarray(label_centres, dtype=np.float64).reshape(-1, 2)
    if area is not None:  # a block holding only labels outside the area would validate nothing
        centres = centres[shapely.contains_xy(area, centres[:, 0], centres[:, 1])]
    labelled = {blocks.cell(x, y) for x, y in centres if 0 <= x < plan.width and 0 <= y < plan.height}
    held = val_blocks(list(labelled), opts.val_fraction, rng)
    log.val_regions += [(Path(plan.path).name, b) for b in held_regions(plan, blocks, held)]
    stride = opts.stride or t // 2
    for r, y0 in enumerate(chip_starts(plan.height, t, stride)):
        for c, x0 in enumerate(chip_starts(plan.width, t, stride)):
            tile = Tile(r, c, x0, y0, t)
            split = blocks.split_of(tile, held)
            if split is None:
                log.dropped_straddling += 1
                continue
            td = read_tile(ds, plan, tile)
            if area is not None:
                td = within_area(td, area)
            if td.valid.any():
                yield split, td


def within_area(td: TileData, area: Any) -> TileData:
    """``td`` with its pixels outside ``area`` (model-grid pixels) made no data, as ``detect`` reads a
    mosaic's empty part: where labels are missing, an unlabelled object is neither taught as
    background (the chip shows no imagery there) nor counted in a segmenter's loss."""
    t = td.tile
    frame = shapely.box(t.x0, t.y0, t.x1, t.y1)
    if area.contains(frame):
        return td
    inside = np.zeros((t.size, t.size), bool)
    if area.intersects(frame):
        burnt = features.rasterize([(area, 1)], out_shape=inside.shape, transform=(1, 0, t.x0, 0, 1, t.y0), fill=0)
        inside = burnt > 0
    return TileData(t, np.where(inside[..., None], td.image, 0).astype(td.image.dtype), td.valid & inside)


def on_model_grid(geom: Any, plan: ReadPlan) -> Any:
    """A geometry in source pixel coordinates on the model grid (None stays None)."""
    if geom is None:
        return None
    return affinity.affine_transform(geom, (1 / plan.scale_x, 0, 0, 1 / plan.scale_y, 0, 0))


def chip_starts(length: int, tile: int, stride: int) -> list[int]:
    """Chip offsets along one axis: every ``stride`` from 0, and a last one ending at the image's
    edge, so no chip holds padding unless the image is smaller than a chip.

    Offsets on multiples of the stride, and of the chip size (the validation split's blocks are one
    chip wide), line chips up with the blocks: every held-out block is cut into validation chips, also
    with a stride that does not divide the chip. Spaced evenly instead, almost every chip touched two
    blocks, so a held-out block's labels went to neither training nor validation (validation was left
    with the chips at the image's top and left).
    """
    if length <= tile:
        return [0]
    last = length - tile
    return sorted(set(range(0, last + 1, stride)) | set(range(0, last + 1, tile)) | {last})


def val_blocks(cells: Sequence[tuple[int, int]], fraction: float, rng: random.Random) -> set[tuple[int, int]]:
    """Blocks (row, col) held out for validation: at least one when there are two or more.

    An image of one labelled block (a small plot) goes to validation whole with
    probability ``fraction``, so that sets of many small plots are split by plot.
    """
    cells = sorted(cells)
    if len(cells) == 1 and fraction > 0:
        return set(cells) if rng.random() < fraction else set()
    if len(cells) < 2 or fraction <= 0:
        return set()
    k = max(1, round(fraction * len(cells)))
    return set(rng.sample(cells, k))


def chip_detection_dataset(
    items: Sequence[ImageLabels | ImageShapes], out_dir: Path, opts: ChipOptions, class_names: Sequence[str]
) -> ChipSet:
    """Write a YOLO-format chip dataset (images/, labels/, data.yaml) under ``out_dir``.

    Each raster is cut into blocks of ``tile_size``; a seeded share of them is
    held out. Training chips overlap (``stride``), and each is also written
    transposed, which with YOLO's two flips gives all eight 90-degree
    orientations of nadir imagery. Boxes (:class:`ImageLabels`) give detector
    labels; polygons (:class:`ImageShapes`) give YOLO-seg outlines, each cut
    to the chip.
    """
    from PIL import Image

    rng = random.Random(opts.seed)
    stats = ChipSet(folder=out_dir)
    empty_pool: dict[str, list[tuple[np.ndarray, str]]] = {"train": [], "val": []}
    for split in ("train", "val"):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "val": 0}

    def write(split: str, name: str, image: np.ndarray, lines: list[str]) -> None:
        Image.fromarray(image).save(out_dir / "images" / split / f"{name}.png")
        (out_dir / "labels" / split / f"{name}.txt").write_text("".join(lines))
        counts[split] += 1

    for n, item in enumerate(items):
        with open_raster(item.image) as ds:
            plan = chip_plan(ds, opts)
            lines_of, centres = _label_lines(item, plan, opts.min_visible)
            area = on_model_grid(item.area, plan)
            taught: set[int] = set()
            for split, td in cut_chips(ds, plan, centres, opts, rng, stats.split, area):
                tile = td.tile
                labelled = lines_of(tile, td.valid)
                taught.update(i for i, _ in labelled)
                lines = [line for _, line in labelled]
                name = f"{n:03d}_{item.image.stem}_{tile.y0}_{tile.x0}"
                if not lines:
                    empty_pool[split].append((td.image, name))
                    continue
                write(split, name, td.image, lines)
                if split == "train":
                    write(split, name + "_T", td.image.transpose(1, 0, 2), _transpose_lines(lines))
                    stats.boxes_train += 2 * len(lines)
                else:
                    stats.boxes_val += len(lines)
            stats.labels_in_no_chip += len(centres) - len(taught)
    for split, pool in empty_pool.items():
        cap = int(opts.max_empty_share * counts[split] / max(1e-6, 1 - opts.max_empty_share))
        rng.shuffle(pool)
        for image, name in pool[:cap]:
            write(split, name, image, [])
    stats.train, stats.val = counts["train"], counts["val"]
    data = {
        "path": str(out_dir.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": {i: c for i, c in enumerate(class_names)},
    }
    (out_dir / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return stats


def held_regions(
    plan: ReadPlan, blocks: SplitBlocks, held: set[tuple[int, int]]
) -> list[tuple[float, float, float, float]]:
    """Bounds (minx, miny, maxx, maxy) of held-out blocks in the raster's CRS (or pixels without one)."""
    out = []
    for r, c in sorted(held):
        px0, py0, px1, py1 = blocks.bounds(r, c)
        x0, y0 = plan.transform @ (px0, py0)
        x1, y1 = plan.transform @ (px1, py1)
        out.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    return out


@dataclass(frozen=True)
class SplitBlocks:
    """The validation split's blocks of a raster (model-grid pixels): squares of ``size`` from its top
    left, the last of each row and column stretched to the edge (up to twice as wide). The chips that
    end at the edge (:func:`chip_starts`) then lie in one block, so a held-out block at the edge gives
    validation chips rather than losing its labels to both splits."""

    width: int
    height: int
    size: int

    @property
    def n_cols(self) -> int:
        return max(1, self.width // self.size)

    @property
    def n_rows(self) -> int:
        return max(1, self.height // self.size)

    def cell(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the block holding pixel (x, y)."""
        return _block_index(y, self.size, self.n_rows), _block_index(x, self.size, self.n_cols)

    def bounds(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a block, in pixels."""
        x1 = self.width if col == self.n_cols - 1 else (col + 1) * self.size
        y1 = self.height if row == self.n_rows - 1 else (row + 1) * self.size
        return col * self.size, row * self.size, x1, y1

    def split_of(self, tile: Tile, held: set[tuple[int, int]]) -> str | None:
        """'val' if the chip lies only in held-out blocks, 'train' if in none, else None."""
        r0, c0 = self.cell(tile.x0, tile.y0)
        r1, c1 = self.cell(tile.x1 - 1, tile.y1 - 1)
        touched = {(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)}
        inside = touched & held
        if not inside:
            return "train"
        return "val" if inside == touched else None


def _block_index(v: float, size: int, n: int) -> int:
    return min(max(int(v // size), 0), n - 1)


def _valid_share(valid: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of each box (x1, y1, x2, y2 in the chip's pixels) that lies on valid pixels (not no data)."""
    if len(boxes) == 0:
        return np.zeros(0)
    h, w = valid.shape
    boxes = np.nan_to_num(boxes)  # the bounds of an empty outline
    table = np.pad(valid.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    x1 = np.clip(np.floor(boxes[:, 0]).astype(int), 0, w)
    y1 = np.clip(np.floor(boxes[:, 1]).astype(int), 0, h)
    x2 = np.clip(np.ceil(boxes[:, 2]).astype(int), 0, w)
    y2 = np.clip(np.ceil(boxes[:, 3]).astype(int), 0, h)
    count = table[y2, x2] - table[y1, x2] - table[y2, x1] + table[y1, x1]
    return count / np.maximum((x2 - x1) * (y2 - y1), 1)


def _yolo_lines(
    boxes: np.ndarray, classes: np.ndarray, tile: Tile, min_visible: float, valid: np.ndarray
) -> list[tuple[int, str]]:
    """YOLO label lines, each with its box's index, for the boxes enough of which is visible in
    ``tile`` on imagery (not no data)."""
    if len(boxes) == 0:
        return []
    x1 = np.clip(boxes[:, 0], tile.x0, tile.x1)
    y1 = np.clip(boxes[:, 1], tile.y0, tile.y1)
    x2 = np.clip(boxes[:, 2], tile.x0, tile.x1)
    y2 = np.clip(boxes[:, 3], tile.y0, tile.y1)
    full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    seen = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    seen = seen * _valid_share(valid, np.c_[x1 - tile.x0, y1 - tile.y0, x2 - tile.x0, y2 - tile.y0])
    keep = (seen > 0) & (seen >= min_visible * full)
    s = float(tile.size)
    return [
        (
            int(i),
            f"{classes[i]} {((x1[i] + x2[i]) / 2 - tile.x0) / s:.6f} {((y1[i] + y2[i]) / 2 - tile.y0) / s:.6f} "
            f"{(x2[i] - x1[i]) / s:.6f} {(y2[i] - y1[i]) / s:.6f}\n",
        )
        for i in np.flatnonzero(keep)
    ]


def _repaired(geoms: Sequence[Any]) -> np.ndarray:
    """Label polygons repaired (OSM footprints can cross themselves, and cutting such a polygon at a
    chip's edge fails), as an array for shapely's vectorised functions."""
    out = np.empty(len(geoms), dtype=object)
    out[:] = list(geoms)
    return polygonal(shapely.make_valid(out))


def _label_lines(
    item: ImageLabels | ImageShapes, plan: ReadPlan, min_visible: float
) -> tuple[Callable[[Tile, np.ndarray], list[tuple[int, str]]], np.ndarray]:
    """A tile's YOLO label lines (boxes or outlines, each with its label's index) of one image, and its
    label centres, on the model grid.

    The lines are of the labels enough of which lies in the tile on imagery (its valid pixels, the
    second argument): a footprint that OpenStreetMap has where a mosaic holds no data is no
    building the network could see, so it is not taught as one.
    """
    if isinstance(item, ImageShapes):
        geoms = _repaired([on_model_grid(g, plan) for g in item.geoms])
        centres = np.asarray([(g.centroid.x, g.centroid.y) for g in geoms]).reshape(-1, 2)
        return (lambda tile, valid: _outline_lines(geoms, item.classes, tile, min_visible, valid)), centres
    boxes = item.boxes.copy()
    boxes[:, [0, 2]] /= plan.scale_x
    boxes[:, [1, 3]] /= plan.scale_y
    centres = np.c_[(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2]
    return (lambda tile, valid: _yolo_lines(boxes, item.classes, tile, min_visible, valid)), centres


def _outline_lines(
    geoms: np.ndarray, classes: np.ndarray, tile: Tile, min_visible: float, valid: np.ndarray
) -> list[tuple[int, str]]:
    """YOLO-seg lines (class, then the outline's x y pairs, 0-1 of the tile), each with its polygon's
    index, for the polygons enough of which is visible in ``tile`` on imagery (the valid share of the
    visible part's bounding box); a polygon the tile cuts in parts keeps its largest part."""
    if len(geoms) == 0:
        return []
    hits, seen, visible = _visible(geoms, tile, valid)
    enough = visible >= np.maximum(min_visible * shapely.area(geoms[hits]), 1e-12)
    s = float(tile.size)
    lines: list[tuple[int, str]] = []
    for i, largest in zip(hits[enough], largest_polygons(seen[enough])):
        ring = np.asarray(largest.exterior.coords)[:-1] if largest is not None else np.zeros((0, 2))
        if len(ring) < 3:
            continue
        xy = np.clip((ring - (tile.x0, tile.y0)) / s, 0, 1)
        lines.append((int(i), f"{classes[i]} " + " ".join(f"{v:.6f}" for v in xy.ravel()) + "\n"))
    return lines


def _visible(geoms: np.ndarray, tile: Tile, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The polygons (model-grid pixels) that ``tile`` touches: their indices, their parts in the tile,
    and the area of each part on imagery (its area times the valid share of its bounding box)."""
    frame = shapely.box(tile.x0, tile.y0, tile.x1, tile.y1)
    hits = np.flatnonzero(shapely.intersects(geoms, frame))
    seen = polygonal(shapely.intersection(geoms[hits], frame))
    on_imagery = _valid_share(valid, shapely.bounds(seen) - (tile.x0, tile.y0, tile.x0, tile.y0))
    return hits, seen, shapely.area(seen) * on_imagery


def _transpose_lines(lines: list[str]) -> list[str]:
    """Label lines of the transposed chip: x and y swapped in every pair (box centre and size, or outline)."""
    out = []
    for line in lines:
        c, *values = line.split()
        swapped = [v for x, y in zip(values[0::2], values[1::2]) for v in (y, x)]
        out.append(" ".join([c, *swapped]) + "\n")
    return out


@dataclass
class SegChips:
    """Chips in memory: images (n, t, t, c) uint8 and masks (n, t, t) uint8 (0 = background)."""

    train_images: list[np.ndarray] = field(default_factory=list)
    train_masks: list[np.ndarray] = field(default_factory=list)
    val_images: list[np.ndarray] = field(default_factory=list)
    val_masks: list[np.ndarray] = field(default_factory=list)
    #: labels with no pixel on imagery in any chip (on no data, or only in chips dropped at the split)
    labels_in_no_chip: int = 0
    split: SplitLog = field(default_factory=SplitLog)

    @property
    def train(self) -> int:
        return len(self.train_images)

    @property
    def val(self) -> int:
        return len(self.val_images)

    @cached_property
    def labelled_val(self) -> int:
        """Validation chips holding labels: what the best epoch is chosen on (counted once)."""
        return sum(int(m.any()) for m in self.val_masks)

    def describe(self) -> str:
        return f"{self.train} train, {self.val} validation ({self.labelled_val} with labels)"

    def record(self) -> dict[str, int]:
        """The counts a package records."""
        return {"chips_train": self.train, "chips_val": self.val, "labels_in_no_chip": self.labels_in_no_chip}

    def validating_on_training(self) -> SegChips:
        """The chips with the training ones as validation too (nothing held out holds a label)."""
        return replace(self, val_images=self.train_images, val_masks=self.train_masks)


#: Mask value of pixels left out of the loss and the scores: no data in the raster.
IGNORE = 255


def chip_segmentation_dataset(
    items: Sequence[ImageShapes], opts: ChipOptions, boundary_px: float = 0, n_classes: int = 1
) -> SegChips:
    """Cut image/mask chip pairs, held-out blocks chosen among blocks holding labels.

    Masks hold 0 for background, 1.. for the classes, ``IGNORE`` where the
    raster has no data, and with ``boundary_px`` a last class marking a band
    of that half-width along every outline (see ``backends.smp.has_boundary``).
    """
    rng = random.Random(opts.seed)
    chips = SegChips()
    t = opts.tile_size
    for item in items:
        with open_raster(item.image) as ds:
            plan = chip_plan(ds, opts)
            geoms = [on_model_grid(g, plan) for g in item.geoms]  # source pixels to model-grid pixels
            centres = [(g.centroid.x, g.centroid.y) for g in geoms if not g.is_empty]
            outlines = _repaired(geoms)  # for counting what is taught; the masks burn ``geoms`` as they are
            taught: set[int] = set()
            shapes = list(zip(geoms, (int(c) + 1 for c in item.classes)))
            rings = [(g.boundary.buffer(boundary_px), 1) for g in geoms] if boundary_px > 0 else []
            area = on_model_grid(item.area, plan)
            for split, td in cut_chips(ds, plan, np.asarray(centres), opts, rng, chips.split, area):
                x0, y0 = td.tile.x0, td.tile.y0
                mask = np.zeros((t, t), np.uint8)
                if shapes:
                    mask = features.rasterize(
                        shapes, out_shape=(t, t), transform=(1, 0, x0, 0, 1, y0), fill=0, dtype="uint8"
                    )
                    if rings:
                        band = features.rasterize(
                            rings, out_shape=(t, t), transform=(1, 0, x0, 0, 1, y0), fill=0, dtype="uint8"
                        )
                        mask[band > 0] = n_classes + 1
                mask[~td.valid] = IGNORE
                if len(outlines):
                    hits, _, visible = _visible(outlines, td.tile, td.valid)
                    taught.update(hits[visible > 0].tolist())
                if split == "train":
                    chips.train_images.append(td.image)
                    chips.train_masks.append(mask)
                else:
                    chips.val_images.append(td.image)
                    chips.val_masks.append(mask)
            chips.labels_in_no_chip += len(centres) - len(taught)
    return chips
