"""Rasters read over HTTP, as users keep orthomosaics: a COG served from 127.0.0.1 with range requests."""

from __future__ import annotations

import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.shutil import copy as rio_copy

from geovision.cli.main import main
from tests.conftest import SAMPLE_TREES


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the byte ranges GDAL's /vsicurl/ asks for."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def send_head(self):  # type: ignore[override]
        path = Path(self.translate_path(self.path.split("?")[0]))
        if not path.is_file():
            self.send_error(404)
            return None
        data = path.read_bytes()
        m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            body = data[start : end + 1]
        else:
            self.send_response(200)
            body = data
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._body = body
        return self

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        outputfile.write(self._body)

    def read(self, *args):  # send_head returns self; SimpleHTTPRequestHandler closes it
        return b""

    def close(self) -> None:
        pass


@pytest.fixture
def served(tmp_path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    rio_copy(SAMPLE_TREES, root / "ortho.tif", driver="COG")
    handler = lambda *a, **kw: RangeHandler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("prefix", ["", "/vsicurl/"])
def test_detect_on_a_cog_over_http(served, tmp_path, prefix, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"{prefix}{served}/ortho.tif"
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        r = CliRunner().invoke(main, ["detect", url, "--model", "trees", "-q"])
    assert r.exit_code == 0, r.stderr
    remote = gpd.read_file(tmp_path / "ortho.trees.gpkg")
    local = tmp_path / "local.gpkg"
    shutil.copy(SAMPLE_TREES, tmp_path / "local.tif")
    assert CliRunner().invoke(main, ["detect", "local.tif", "--model", "trees", "-o", str(local), "-q"]).exit_code == 0
    assert len(remote) == len(gpd.read_file(local)) > 10 and set(remote["source"]) == {"ortho.tif"}


def test_a_missing_url_is_one_clear_line(served):
    r = CliRunner().invoke(main, ["detect", f"{served}/nope.tif", "--model", "trees", "-o", "x.gpkg"])
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"{served}/nope.tif" in r.stderr  # the URL as given, not folded to http:/
