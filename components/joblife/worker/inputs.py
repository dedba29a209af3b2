"""Integrity checks of downloaded input files, chosen by file name suffix: a corrupt input
is an :class:`InternalJobError` naming the file (retrying would not help)."""

from __future__ import annotations

import gzip
import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from joblife.errors import InternalJobError


def _json(path: Path) -> None:
    json.loads(path.read_bytes())


def _gzip(path: Path) -> None:
    with gzip.open(path, "rb") as stream:
        while stream.read(1 << 20):
            pass


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
        if bad is not None:
            raise ValueError(f"member {bad} fails its CRC check")


def _tar(path: Path) -> None:
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile():
                extracted = archive.extractfile(member)
                if extracted is not None:
                    while extracted.read(1 << 20):
                        pass


def _hdf5(path: Path) -> None:
    import h5py  # only for HDF5 inputs: a heavy import

    with h5py.File(path, "r") as handle:
        handle.visit(lambda name: None)


def _image(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()


CHECKS: dict[str, tuple[str, Callable[[Path], None]]] = {
    ".json": ("JSON", _json),
    ".gz": ("gzip", _gzip),
    ".tgz": ("tar", _tar),
    ".tar": ("tar", _tar),
    ".zip": ("zip", _zip),
    ".h5": ("HDF5", _hdf5),
    ".hdf5": ("HDF5", _hdf5),
    ".he5": ("HDF5", _hdf5),
    ".nc": ("HDF5", _hdf5),
    ".png": ("image", _image),
    ".jpg": ("image", _image),
    ".jpeg": ("image", _image),
    ".tif": ("image", _image),
    ".tiff": ("image", _image),
}


def check_file(path: Path) -> None:
    """Check ``path`` by its suffix (``.tar.gz`` as tar); unknown suffixes pass."""
    suffix = ".tar" if path.name.endswith(".tar.gz") else path.suffix.lower()
    check = CHECKS.get(suffix)
    if check is None:
        return
    kind, function = check
    try:
        function(path)
    except Exception as exc:
        raise InternalJobError(f"input {path.name} is not a valid {kind} file: {exc}") from exc
