"""Building the QGIS plugin zip that "Plugins > Install from ZIP" takes.

The plugin's files travel in the geovision package (``geovision/qgis_plugin``),
so ``geovision qgis-plugin`` works from an installed wheel as from a checkout.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from geovision.writers import atomic_output, check_output

PLUGIN_SOURCE = Path(__file__).resolve().parent / "qgis_plugin"
#: the folder QGIS installs the plugin as (not "geovision": that would shadow the library in QGIS's Python)
PLUGIN_FOLDER = "geovision_qgis"
PLUGIN_FILES = ("*.py", "metadata.txt", "icon.png")


def plugin_files() -> list[Path]:
    """The plugin's files, sorted (no caches, no tests)."""
    return sorted({p for pattern in PLUGIN_FILES for p in PLUGIN_SOURCE.glob(pattern)})


def build_plugin_zip(output: str | os.PathLike[str] = "geovision_qgis.zip", overwrite: bool = False) -> Path:
    """Write the plugin as a zip holding one folder, ``geovision_qgis/``, and return its path."""
    out = check_output(output, overwrite, suffixes=(".zip",))
    with atomic_output(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in plugin_files():
            zf.write(path, f"{PLUGIN_FOLDER}/{path.name}")
    return out
