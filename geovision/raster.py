"""Windowed reading of a raster at the model's ground resolution.

A raster is never read whole. :func:`plan_read` works out the *model grid*:
the raster's footprint resampled to the model's ground resolution (metres per
pixel, measured on the ground whatever the CRS, degrees included). Tiles of
that grid are read one window at a time, resampled by GDAL on the fly, with
bands chosen and values brought to 0-255 by one per-raster stretch computed
once, so neighbouring tiles never differ in contrast.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import rasterio
from affine import Affine
from pyproj import Geod, Transformer
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from geovision.errors import BandError, GeoreferenceError, RasterError, first_line
from geovision.tiling import Tile

#: File names taken for rasters when a folder is searched or a file could be either kind.
RASTER_INPUT_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


def is_raster_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a raster by its suffix (GeoTIFF, VRT, JPEG 2000, ERDAS Imagine)."""
    return Path(path).suffix.lower() in RASTER_INPUT_SUFFIXES


#: Resampling ratios this close to 1 are treated as 1, so a 0.0997 m raster
#: is read as it is by a 0.1 m model instead of being blurred by 0.3%.
SNAP_TOLERANCE = 0.02

#: Longest side, in pixels, of the decimated read used for the stretch.
STRETCH_SAMPLE_PX = 1024

_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class Normalization:
    """How raster values become 0-255.

    ``method`` is ``"none"`` (uint8 taken as is), ``"percentile"`` (per band,
    ``low``-``high`` percentiles of the whole raster map to 0-255) or
    ``"fixed"`` (``min``/``max`` per band map to 0-255). ``"auto"`` means
    none for uint8 and percentile otherwise.
    """

    method: Literal["auto", "none", "percentile", "fixed"] = "auto"
    low: float = 2.0
    high: float = 98.0
    min: tuple[float, ...] | None = None
    max: tuple[float, ...] | None = None


#: how invalid pixels are found: not at all, by nodata value, by GDAL's mask, or by an alpha band
MaskMode = Literal["none", "nodata", "dataset", "alpha"]


@dataclass(frozen=True)
class ReadPlan:
    """Everything needed to read tiles of one raster for one model.

    ``scale_x``/``scale_y`` are source pixels per model-grid pixel;
    ``transform`` maps model-grid pixels to the raster's CRS.
    """

    path: str
    width: int
    height: int
    transform: Affine
    crs: rasterio.crs.CRS | None
    scale_x: float
    scale_y: float
    pixel_size_m: tuple[float, float]
    bands: tuple[int, ...]
    stretch: tuple[tuple[float, ...], tuple[float, ...]] | None
    mask_mode: MaskMode
    nodata: float | None
    source_width: int
    source_height: int
    #: a band with colour interpretation alpha that GDAL does not use as the mask (not the last band)
    alpha: int | None = None
    #: derived once here: the source raster's own geotransform, and a model-grid pixel's ground area
    source_transform: Affine = field(init=False)
    pixel_area_m2: float = field(init=False)

    def __post_init__(self) -> None:
        source = self.transform @ Affine.scale(1 / self.scale_x, 1 / self.scale_y)
        object.__setattr__(self, "source_transform", source)
        object.__setattr__(self, "pixel_area_m2", self.pixel_size_m[0] * self.pixel_size_m[1])

    @property
    def resampled(self) -> bool:
        return self.scale_x != 1.0 or self.scale_y != 1.0


#: URL schemes GDAL reads over the network (through /vsicurl/ and friends).
REMOTE_SCHEMES = ("http://", "https://", "ftp://", "s3://", "gs://", "az://", "oss://")


def is_remote(path: str | os.PathLike[str]) -> bool:
    """A URL or a GDAL virtual file system path (``/vsicurl/...``, ``/vsis3/...``): not a local file."""
    s = str(path)
    return s.startswith(REMOTE_SCHEMES) or s.startswith("/vsi")


def raster_name(path: str | os.PathLike[str]) -> str:
    """The file name of a raster path, a ``/vsi*`` path or a URL (less its query string)."""
    return str(path).split("?")[0].rstrip("/").split("/")[-1]


def open_raster(path: str | os.PathLike[str]) -> rasterio.io.DatasetReader:
    """Open ``path`` with rasterio, turning every failure into a RasterError.

    Local paths are checked first for a clear message; URLs (a COG on an object
    store) and ``/vsi*`` paths go to GDAL as they are, never through ``Path``,
    which would fold ``https://`` into ``https:/``.
    """
    remote = is_remote(path)
    p: str | Path = str(path) if remote else Path(path)
    if not remote:
        assert isinstance(p, Path)
        if not p.exists():
            raise RasterError(f"{p}: no such file")
        if p.is_dir():
            raise RasterError(f"{p}: is a directory, not a raster")
    try:
        with warnings.catch_warnings():
            # a raster without georeference is refused or accepted later, with a clear message
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(p)
    except RasterioIOError as e:
        what = "cannot be read over the network, or is not a raster" if remote else "not a raster GDAL can read"
        raise RasterError(f"{p}: {what} ({first_line(e)})") from e
    if ds.width < 1 or ds.height < 1 or ds.count < 1:
        ds.close()
        raise RasterError(f"{p}: raster is empty ({ds.width}x{ds.height}, {ds.count} bands)")
    return ds


def plan_read(
    ds: rasterio.io.DatasetReader,
    resolution_m: float | None,
    in_channels: int,
    bands: Sequence[int] | None = None,
    normalization: Normalization = Normalization(),
    accept_grayscale: bool = False,
    pixel_coords: bool = False,
    native_resolution_m: float | None = None,
) -> ReadPlan:
    """Check ``ds`` and work out how to read it for a model.

    ``resolution_m`` is the model's ground resolution; ``None`` reads the
    raster at its own resolution. With ``pixel_coords`` a raster without
    georeference is accepted; it is read at its own resolution unless
    ``native_resolution_m`` says how large its pixels are.
    """
    name = Path(ds.name).name
    if ds.transform.is_identity and ds.gcps[0] and not pixel_coords:
        raise GeoreferenceError(
            f"{name}: raster is georeferenced by ground control points only; "
            "warp it first (gdalwarp) so it has a geotransform"
        )
    georeferenced = ds.crs is not None and not ds.transform.is_identity
    if not georeferenced and not pixel_coords:
        raise GeoreferenceError(
            f"{name}: raster has no georeference (no CRS or geotransform); georeference it "
            "(e.g. gdal_translate -a_srs/-a_ullr) or pass `pixel_coords=True` for pixel-coordinate output"
        )
    if not georeferenced:
        pixel_m: tuple[float, float] = (native_resolution_m or 1.0,) * 2  # type: ignore[assignment]
        scale_x, scale_y = _scales(pixel_m, resolution_m) if native_resolution_m else (1.0, 1.0)
        crs = None
    else:
        pixel_m = ground_pixel_size_m(ds.crs, ds.transform, ds.width, ds.height)
        scale_x, scale_y = _scales(pixel_m, resolution_m)
        crs = ds.crs
    width = max(1, round(ds.width / scale_x))
    height = max(1, round(ds.height / scale_y))
    # Exact ratios that make the model grid span the raster to the pixel.
    scale_x, scale_y = ds.width / width, ds.height / height
    chosen = select_bands(ds, in_channels, bands, accept_grayscale)
    mask_mode, nodata, alpha = _mask_mode(ds, chosen)
    stretch = compute_stretch(ds, chosen, normalization, mask_mode, nodata, alpha)
    return ReadPlan(
        path=str(ds.name),
        width=width,
        height=height,
        transform=ds.transform @ Affine.scale(scale_x, scale_y),
        crs=crs,
        scale_x=scale_x,
        scale_y=scale_y,
        pixel_size_m=(pixel_m[0] * scale_x, pixel_m[1] * scale_y),
        bands=tuple(chosen),
        stretch=stretch,
        mask_mode=mask_mode,
        nodata=nodata,
        source_width=ds.width,
        source_height=ds.height,
        alpha=alpha,
    )


def ground_pixel_size_m(crs: rasterio.crs.CRS, transform: Affine, width: int, height: int) -> tuple[float, float]:
    """Ground length in metres of one pixel step along columns and rows.

    Measured geodesically at the raster's centre, so it is right for
    geographic CRSs (degrees), Web Mercator (whose metres are not ground
    metres away from the equator) and rotated transforms alike.
    """
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    cx, cy = width / 2, height / 2
    step = 0.5  # pixels; small enough to be local, large enough for float precision
    pts = [transform @ (cx, cy), transform @ (cx + step, cy), transform @ (cx, cy + step)]
    lon, lat = to_lonlat.transform([p[0] for p in pts], [p[1] for p in pts])
    if not all(map(math.isfinite, [*lon, *lat])):
        raise GeoreferenceError(f"raster centre cannot be placed on the globe in {crs}")
    _, _, dx = _GEOD.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, dy = _GEOD.inv(lon[0], lat[0], lon[2], lat[2])
    if dx <= 0 or dy <= 0:
        raise GeoreferenceError("raster pixels have zero size on the ground")
    return dx / step, dy / step


def _scales(pixel_m: tuple[float, float], resolution_m: float | None) -> tuple[float, float]:
    """Source pixels per model pixel along x and y, snapped to 1 when close."""
    if resolution_m is None:
        return 1.0, 1.0
    out = []
    for size in pixel_m:
        s = resolution_m / size
        out.append(1.0 if abs(s - 1.0) < SNAP_TOLERANCE else s)
    return out[0], out[1]


def select_bands(
    ds: rasterio.io.DatasetReader,
    in_channels: int,
    bands: Sequence[int] | None = None,
    accept_grayscale: bool = False,
) -> list[int]:
    """1-based band indexes to feed the model, in model channel order.

    Explicit ``bands`` win. Otherwise RGB colour interpretation is used when
    the raster has it, else the first non-alpha bands in order. A single-band
    raster is repeated into every channel only if the model accepts grayscale.
    """
    name = Path(ds.name).name
    if bands:
        bad = [b for b in bands if not 1 <= b <= ds.count]
        if bad:
            raise BandError(f"{name}: band(s) {bad} do not exist; raster has {ds.count} band(s)")
        if len(bands) != in_channels:
            raise BandError(f"{name}: model needs {in_channels} band(s), {len(bands)} were given")
        return list(bands)
    interp = list(ds.colorinterp)
    data_bands = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
    if in_channels == 3:
        rgb = [interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if c in interp]
        if len(rgb) == 3:
            return rgb
    if len(data_bands) >= in_channels:
        return data_bands[:in_channels]
    if len(data_bands) == 1 and accept_grayscale:
        return data_bands * in_channels
    raise BandError(
        f"{name}: model needs {in_channels} band(s) but the raster has {len(data_bands)} "
        f"(besides alpha); choose them with `bands`"
    )


def _mask_mode(ds: rasterio.io.DatasetReader, bands: Sequence[int]) -> tuple[MaskMode, float | None, int | None]:
    """How to find invalid pixels: not at all, from nodata values, GDAL's mask, or an alpha band.

    GDAL masks with an alpha band only when it is the last one; an alpha band
    elsewhere (colour interpretation alpha on band 1, say) is used here itself.
    """
    flags = [ds.mask_flag_enums[b - 1] for b in sorted(set(bands))]
    alphas = [i + 1 for i, c in enumerate(ds.colorinterp) if c == ColorInterp.alpha]
    if alphas and not any(MaskFlags.alpha in f for f in flags):
        return "alpha", None, alphas[0]
    if all(f == [MaskFlags.all_valid] for f in flags):
        return "none", None, None
    if all(MaskFlags.nodata in f for f in flags) and ds.nodata is not None:
        return "nodata", float(ds.nodata), None
    return "dataset", None, None


def compute_stretch(
    ds: rasterio.io.DatasetReader,
    bands: Sequence[int],
    norm: Normalization,
    mask_mode: str = "none",
    nodata: float | None = None,
    alpha: int | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Per-band (low, high) values that map to 0 and 255, or None for as-is.

    Percentiles come from one decimated read of the whole raster (GDAL uses
    overviews when present), never tile by tile, which would make seams.
    """
    method = norm.method
    if method == "auto":
        method = "none" if all(ds.dtypes[b - 1] == "uint8" for b in bands) else "percentile"
    if method == "none":
        if any(ds.dtypes[b - 1] != "uint8" for b in bands):
            raise BandError(f"{Path(ds.name).name}: normalization 'none' needs uint8 bands, raster is {ds.dtypes[0]}")
        return None
    if method == "fixed":
        if norm.min is None or norm.max is None:
            raise BandError("fixed normalization needs min and max values")
        n = len(bands)
        lo = tuple(norm.min) * n if len(norm.min) == 1 else tuple(norm.min)
        hi = tuple(norm.max) * n if len(norm.max) == 1 else tuple(norm.max)
        if len(lo) != n or len(hi) != n:
            raise BandError(f"fixed normalization has {len(lo)} values for {n} bands")
        return lo[:n], hi[:n]
    f = max(ds.width, ds.height) / STRETCH_SAMPLE_PX
    shape = (max(1, round(ds.height / f)), max(1, round(ds.width / f))) if f > 1 else (ds.height, ds.width)
    unique = sorted(set(bands))
    sample = ds.read(unique, out_shape=(len(unique), *shape), resampling=Resampling.nearest)
    valid = _valid_mask(ds, sample, mask_mode, nodata, None, shape, alpha)
    lows, highs = [], []
    for b in bands:
        values = sample[unique.index(b)][valid]
        if values.size == 0:
            raise RasterError(f"{Path(ds.name).name}: raster holds no valid pixels (all nodata)")
        lo, hi = np.percentile(values, [norm.low, norm.high])
        if hi <= lo:
            hi = lo + 1.0
        lows.append(float(lo))
        highs.append(float(hi))
    return tuple(lows), tuple(highs)


def _valid_mask(
    ds: rasterio.io.DatasetReader,
    data: np.ndarray,
    mask_mode: str,
    nodata: float | None,
    window: Window | None,
    shape: tuple[int, int],
    alpha: int | None = None,
) -> np.ndarray:
    """Boolean (rows, cols) array, True where the pixel holds data.

    NaN and infinite values of float rasters are no data whatever the
    declared nodata (``data != nan`` is always true).
    """
    if mask_mode == "nodata":
        valid = np.any(data != nodata, axis=0)
    elif mask_mode == "alpha":
        valid = ds.read(alpha, window=window, out_shape=shape, resampling=Resampling.nearest) > 0
    elif mask_mode == "dataset":
        valid = ds.dataset_mask(window=window, out_shape=shape, resampling=Resampling.nearest) > 0
    else:
        valid = np.ones(shape, dtype=bool)
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    return valid


def normalize(data: np.ndarray, stretch: tuple[tuple[float, ...], tuple[float, ...]] | None) -> np.ndarray:
    """(bands, rows, cols) raster values to uint8 with the per-raster stretch."""
    if stretch is None:
        return data.astype(np.uint8, copy=False)
    lo = np.asarray(stretch[0], dtype=np.float32)[:, None, None]
    hi = np.asarray(stretch[1], dtype=np.float32)[:, None, None]
    out = (data.astype(np.float32) - lo) * (255.0 / (hi - lo))
    if data.dtype.kind == "f":  # NaN (no data, masked) would cast to an arbitrary byte
        np.nan_to_num(out, copy=False, nan=0.0)
    np.clip(out, 0, 255, out=out)
    return np.rint(out, out=out).astype(np.uint8)


@dataclass
class TileData:
    """One tile read for the model: ``image`` is (size, size, channels) uint8."""

    tile: Tile
    image: np.ndarray
    valid: np.ndarray


def read_tile(ds: rasterio.io.DatasetReader, plan: ReadPlan, tile: Tile) -> TileData:
    """Read one tile, resampled to the model grid and padded past the edge."""
    w = min(tile.size, plan.width - tile.x0)
    h = min(tile.size, plan.height - tile.y0)
    n = len(plan.bands)
    image = np.zeros((n, tile.size, tile.size), dtype=np.uint8)
    valid = np.zeros((tile.size, tile.size), dtype=bool)
    if w > 0 and h > 0:
        window = Window(tile.x0 * plan.scale_x, tile.y0 * plan.scale_y, w * plan.scale_x, h * plan.scale_y)
        unique = sorted(set(plan.bands))
        resampling = Resampling.bilinear if plan.resampled else Resampling.nearest
        try:
            data = ds.read(unique, window=window, out_shape=(len(unique), h, w), resampling=resampling)
            valid[:h, :w] = _valid_mask(ds, data, plan.mask_mode, plan.nodata, window, (h, w), plan.alpha)
        except RasterioIOError as e:  # a damaged block deep inside a file that opened fine
            c, r = round(window.col_off), round(window.row_off)
            raise RasterError(
                f"{raster_name(ds.name)}: cannot read pixels in window col {c}, row {r}, "
                f"{round(window.width)} x {round(window.height)} ({first_line(e)})"
            ) from e
        data = data[[unique.index(b) for b in plan.bands]]
        image[:, :h, :w] = normalize(data, plan.stretch)
    return TileData(tile, np.ascontiguousarray(image.transpose(1, 2, 0)), valid)


def iter_tiles(plan: ReadPlan, tiles: Iterable[Tile], skip_empty: bool = True) -> Iterator[TileData | Tile]:
    """Read ``tiles`` in order; a tile with no valid pixel is yielded bare.

    Yielding skipped tiles (as plain :class:`Tile`) lets callers count
    progress without sending them through the model.
    """
    tiles = iter(tiles)
    first = next(tiles, None)
    if first is None:
        return
    with open_raster(plan.path) as ds, rasterio.Env(**_cache_option(ds, plan, first.size)):
        for tile in itertools.chain([first], tiles):
            td = read_tile(ds, plan, tile)
            if skip_empty and not td.valid.any():
                yield tile
            else:
                yield td


def _cache_option(ds: rasterio.io.DatasetReader, plan: ReadPlan, tile_size: int) -> dict[str, int]:
    """GDAL's block cache sized for one row of tiles across the raster, 64 MB to 1 GB.

    Tiles go row by row, so each decoded block is wanted again only by the
    next row of tiles. GDAL's default (5% of RAM) keeps far more than that
    alive, which makes memory grow with the raster; a GDAL_CACHEMAX the user
    set is left alone.
    """
    block_h = ds.block_shapes[0][0] if ds.block_shapes else 256
    rows = math.ceil(tile_size * plan.scale_y) + 2 * block_h
    itemsize = max(np.dtype(d).itemsize for d in ds.dtypes)
    need = ds.width * rows * ds.count * itemsize
    return block_cache(int(min(max(need * 1.25, 64 * 2**20), 2**30)))


def block_cache(nbytes: int) -> dict[str, int]:
    """rasterio.Env options giving GDAL a block cache of ``nbytes``, unless the user set GDAL_CACHEMAX."""
    return {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": nbytes}


T = TypeVar("T")


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Run ``items`` in a background thread, ``depth`` items ahead.

    GDAL and numpy release the GIL, so reading and normalising the next tiles
    overlaps with the model working on the current ones. Exceptions raised in
    the thread are re-raised in the caller.
    """
    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def work() -> None:
        source = iter(items)
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(("error", e))
        finally:
            # a generator that opened rasters must be closed in this thread: GDAL's
            # environment is per thread, and closing it elsewhere raises EnvError
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="geovision-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)
