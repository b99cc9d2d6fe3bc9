"""Two on-disk caches under cache_root(), both keyed by the source files' names, sizes and mtimes:

* the probe: mode, width and height of every image from its header, or why the header cannot be read
  (a truncated JPEG still has a valid header: it is caught when the decoded cache is built);
* the decoded cache: every kept image decoded once, whole (nothing cropped, its aspect kept), shrunk so that
  its shorter side is `size` (a smaller image is kept as it is), packed into one raw uint8 buffer with an
  index of each image's offset, height and width, that every cell and epoch of every suite reads; random
  resized crops draw from the whole image, evaluation resizes and centre-crops it (bench.data.views);
  with data.cache = "none", only which files cannot be decoded (`undecoded`).

Raw uint8 was chosen by measurement over re-encoded small JPEGs: a batch is a memcpy instead of N JPEG
decodes (see docs/performance.md); the price is disk, h*w*3 bytes per image. Both caches are
built in parallel over the cores; an image that fails to decode is recorded as bad, never raised.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from bench.artefacts import building, intact, reserve, seal
from bench.data.cachedir import cache_root
from bench.data.listing import opened
from bench.data.sources import file_stats
from bench.errors import UserError
from bench.hashing import stable_hash
from bench.store import atomic_dir, atomic_path

if TYPE_CHECKING:
    from bench.config import DataConfig

PARALLEL_MIN = 256  # below this many images a process pool costs more than it saves
VERSION = 1
LAYOUT = 2  # bump when the stored pixels change, by layout or decoding (2: whole images packed, with an index)


def _key(root: Path, paths: list[str], stats: np.ndarray | None, **extra) -> str:
    """The files by name, size and mtime (as listed: bench.data.listing; stat'ed now without `stats`)."""
    stats = file_stats(root, paths) if stats is None else stats
    return stable_hash({"v": VERSION, "root": str(Path(root).resolve()), "paths": paths,
                        "stats": stats.tolist(), **extra}, 16)


def _shares(paths: list[str], stats: np.ndarray, workers: int) -> list[tuple[list[str], np.ndarray, range]]:
    """The rows cut into 8 jobs per worker, each with its own rows' paths and stats (a job pickles its
    share, not every path)."""
    step = max(1, -(-len(paths) // (8 * workers)))
    return [(paths[i:i + step], stats[i:i + step], range(i, min(len(paths), i + step)))
            for i in range(0, len(paths), step)]


def _workers(n: int) -> int:
    return 1 if n < PARALLEL_MIN else max(1, min(os.cpu_count() or 1, 16))


def _progress(label: str, total: int):
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    p = Progress(transient=True, console=console, disable=not console.is_terminal)
    return p, p.add_task(label, total=total)


def _map(fn, jobs: list, label: str, total: int, workers: int) -> list:
    """fn(job) for each job, in a process pool when worth it, with a progress bar; results in order."""
    progress, task = _progress(label, total)
    out = []
    with progress:
        if workers == 1:
            for job in jobs:
                out.append(fn(job))
                progress.advance(task, len(job[-1]))
        else:
            with ProcessPoolExecutor(workers) as pool:
                for job, res in zip(jobs, pool.map(fn, jobs), strict=True):
                    out.append(res)
                    progress.advance(task, len(job[-1]))
    return out


# ---- probe -----------------------------------------------------------------------------------------

def probe_one(path: Path, expected: np.ndarray | None = None) -> tuple[str, int, int, str]:
    """(mode, width, height, '') from the header, or ('', 0, 0, why) when it cannot be read; a file that is
    not as listed (`expected`: its size and mtime) raises (bench.data.listing.opened)."""
    try:
        f = opened(path, expected)
    except OSError as e:
        return "", 0, 0, f"unreadable ({type(e).__name__}: {str(e)[:60]})"
    with f:
        try:
            if os.fstat(f.fileno()).st_size == 0:
                return "", 0, 0, "empty file"
            with Image.open(f) as im:
                return im.mode, im.size[0], im.size[1], ""
        except Exception as e:  # PIL raises many types for bad files; each becomes a recorded reason
            return "", 0, 0, f"unreadable ({type(e).__name__}: {str(e)[:60]})"


def _probe_job(job: tuple[str, list[str], np.ndarray, range]) -> list[tuple[str, int, int, str]]:
    root, paths, stats, _ = job  # paths and stats: the rows' own (_shares)
    return [probe_one(Path(root) / path, stat) for path, stat in zip(paths, stats, strict=True)]


@dataclass
class Probe:
    modes: np.ndarray  # str per image ('' when unreadable)
    width: np.ndarray
    height: np.ndarray
    bad: np.ndarray  # str per image: why it is unusable, '' when fine
    key: str = ""  # the source's files by name, size and mtime: what the probe was read from


def probe(root: Path, paths: list[str], stats: np.ndarray | None = None) -> Probe:
    """The headers of these files (`stats`: as listed, each file held to them; None: stat'ed now)."""
    stats = file_stats(root, paths) if stats is None else stats
    key = _key(root, paths, stats)
    file = cache_root() / "probe" / f"{key}.npz"
    with building(file):
        if intact(file):
            try:
                z = np.load(file, allow_pickle=False)
                return Probe(z["modes"].astype(object), z["width"], z["height"], z["bad"].astype(object), key)
            except Exception:  # sealed yet unreadable (another numpy?): a derived cache is simply made again
                pass
        workers = _workers(len(paths))
        jobs = [(str(root), *share) for share in _shares(paths, stats, workers)]
        rows = [r for part in _map(_probe_job, jobs, "reading image headers", len(paths), workers) for r in part]
        modes, w, h, bad = (zip(*rows, strict=True) if rows else ((), (), (), ()))
        result = Probe(np.array(modes, dtype=object), np.array(w, dtype=np.int64), np.array(h, dtype=np.int64),
                       np.array(bad, dtype=object), key)
        with atomic_path(file) as tmp:
            np.savez(tmp, modes=result.modes.astype(str), width=result.width, height=result.height,
                     bad=result.bad.astype(str))
        seal(file)
    return result


# ---- decoded images --------------------------------------------------------------------------------

def stored_shapes(widths: np.ndarray, heights: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) int64 (height, width) images of these sizes are kept at: the shorter side `size` and the longer
    one in proportion, truncated as torchvision's Resize truncates it; an image smaller than that is kept
    whole. Vectorised: millions of headers at a time."""
    w, h = np.asarray(widths, dtype=np.int64), np.asarray(heights, dtype=np.int64)
    short, long = np.minimum(w, h), np.maximum(w, h)
    scaled = (size * long / np.maximum(short, 1)).astype(np.int64)  # float64, as Python's int(size * long / short)
    kept = short <= size
    return np.column_stack([np.where(kept, h, np.where(h <= w, size, scaled)),
                            np.where(kept, w, np.where(h <= w, scaled, size))]).reshape(-1, 2)


def stored_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """stored_shapes of one image."""
    h, w = stored_shapes([width], [height], size)[0].tolist()
    return h, w


def load_image(path: Path | BinaryIO, size: int) -> np.ndarray:
    """Decode to RGB (any mode converted), whole, shorter side to `size` (stored_shape): (h, w, 3) uint8.

    A JPEG larger than that is decoded at a reduced scale first (libjpeg's DCT scaling through Pillow's draft
    mode), which is most of the speed on 800 px photos: to no less than twice the size kept where it can be
    reduced that far (Pillow's bilinear resize, as torchvision's Resize runs it on a PIL image, then makes
    the rest of the reduction), else to the size kept (half scale at most). On the photos of
    tests/test_views.py at 48-224 px that differs from resizing the full decode by 0.71 grey levels on
    average at most (measured), where reducing straight to the size kept from 4x or 8x larger gave up to 9. The draft's box maps the original's edges exactly,
    though libjpeg rounds the reduced size up.
    """
    with Image.open(path) as im:
        height, width = stored_shape(*im.size, size)
        box = None
        if (height, width) != (im.size[1], im.size[0]):
            margin = 2 if min(im.size[0] // (2 * width), im.size[1] // (2 * height)) >= 2 else 1
            drafted = im.draft("RGB", (margin * width, margin * height))
            box = drafted[1] if drafted else None
        im = im.convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BILINEAR, box=box)
        return np.asarray(im)


def _decode_job(job: tuple[str, str, str, int, list[str], np.ndarray, range]) -> list[tuple[int, str]]:
    """Decode rows into the shared buffer at their index's places; returns (row, reason) for each failure.
    A file not as listed raises (bench.data.listing.opened)."""
    root, file, index_file, size, paths, stats, rows = job  # paths and stats: the rows' own (_shares)
    out = np.lib.format.open_memmap(file, mode="r+")
    index = np.load(index_file, mmap_mode="r")
    failed = []
    for i, path, stat in zip(rows, paths, stats, strict=True):
        offset, h, w = index[i]
        try:
            f = opened(Path(root) / path, stat)
        except OSError as e:
            failed.append((i, f"cannot decode ({type(e).__name__})"))
            continue
        try:
            with f:
                im = load_image(f, size)
                if im.shape != (h, w, 3):  # a header that lies about the size: not what the index promised
                    raise ValueError(f"decoded {im.shape[1]}x{im.shape[0]}, header said otherwise")
                out[offset:offset + h * w * 3] = im.reshape(-1)
        except Exception as e:  # truncated, corrupt, unsupported: recorded, never raised
            failed.append((i, f"cannot decode ({type(e).__name__})"))
    out.flush()
    return failed


@dataclass
class Decoded:
    pixels: np.ndarray | None  # every image's h*w*3 bytes, back to back: a read-only memmap; None: cache "none"
    index: np.ndarray | None  # (N, 3) int64: each image's offset in `pixels`, its height and width
    bad: dict[int, str]  # row -> why it could not be decoded (its pixels are zeros)
    folder: Path | None
    files: list[str] = field(default_factory=list)  # data.cache = "none": every row's file, decoded per batch
    stats: np.ndarray | None = None  # data.cache = "none": every row's file's size and mtime, as listed


def stored_index(widths: np.ndarray, heights: np.ndarray, size: int) -> np.ndarray:
    """(N, 3) int64: where each image (by its header's width and height) lies in the packed buffer, and its
    stored height and width."""
    shapes = stored_shapes(widths, heights, size)
    sizes = shapes[:, 0] * shapes[:, 1] * 3
    return np.column_stack([np.cumsum(sizes) - sizes, shapes])


def _nbytes(index: np.ndarray) -> int:
    """The packed buffer's length for this index."""
    return int((index[:, 1] * index[:, 2] * 3).sum())


def cache_bytes(widths: np.ndarray, heights: np.ndarray, size: int) -> int:
    """What the decoded cache of images of these header sizes at `size` px takes on disk."""
    return _nbytes(stored_index(widths, heights, size))


def _check_job(job: tuple[str, list[str], np.ndarray, range]) -> list[tuple[int, str]]:
    """(row, reason) for each file that cannot be decoded, read at the smallest scale the decoder offers:
    a truncated or corrupt image fails there as it fails at any size. A file not as listed raises."""
    root, paths, stats, rows = job  # paths and stats: the rows' own (_shares)
    failed = []
    for i, path, stat in zip(rows, paths, stats, strict=True):
        try:
            with opened(Path(root) / path, stat) as f, Image.open(f) as im:
                im.draft("RGB", (1, 1))
                im.convert("RGB")
        except UserError:
            raise
        except Exception as e:  # as _decode_job words it: the same images leave the same splits
            failed.append((i, f"cannot decode ({type(e).__name__})"))
    return failed


def undecoded(root: Path, paths: list[str], widths: np.ndarray, heights: np.ndarray, size: int,
              stats: np.ndarray | None = None) -> Decoded:
    """data.cache = "none": no cache, only which files cannot be decoded (so that the splits are those of the
    decoded cache), found once by a pass over the files and kept under their key, and the index the cache
    would have (each image's stored height and width). Each file is held to `stats` (as listed; None: as
    stat'ed now) here and whenever a batch decodes it."""
    stats = file_stats(root, paths) if stats is None else stats
    file = cache_root() / "checked" / f"{_key(root, paths, stats, check='decode')}.json"
    with building(file):
        bad = None
        if intact(file):
            with contextlib.suppress(OSError, ValueError):
                bad = {int(k): str(v) for k, v in json.loads(file.read_text()).items()}
        if bad is None:
            workers = _workers(len(paths))
            jobs = [(str(root), *share) for share in _shares(paths, stats, workers)]
            bad = dict(f for part in _map(_check_job, jobs, "checking that images decode", len(paths), workers)
                       for f in part)
            with atomic_path(file) as tmp:
                tmp.write_text(json.dumps({str(k): v for k, v in bad.items()}))
            seal(file)
    return Decoded(None, stored_index(widths, heights, size), bad, None, [str(Path(root) / p) for p in paths], stats)


def decoded_folder(root: Path, paths: list[str], size: int, stats: np.ndarray | None = None) -> Path:
    """Where the decoded cache of these files (of these stats) at this size is (or will be)."""
    return cache_root() / "decoded" / _key(root, paths, stats, size=size, layout=LAYOUT)


def room_for(root: Path, paths: list[str], widths: np.ndarray, heights: np.ndarray,
             size: int, stats: np.ndarray | None = None) -> tuple[int, int, Path] | None:
    """(bytes the decoded cache of these files at this size needs, bytes free, the disk's folder), or None
    when that cache is already built."""
    folder = decoded_folder(root, paths, size, stats)
    if _open_decoded(folder, len(paths)) is not None:
        return None
    existing = folder
    while not existing.exists():  # the disk the cache will be on: its nearest existing folder's
        existing = existing.parent
    return cache_bytes(widths, heights, size), shutil.disk_usage(existing).free, existing


def decoded(root: Path, paths: list[str], widths: np.ndarray, heights: np.ndarray, size: int,
            stats: np.ndarray | None = None) -> Decoded:
    """The decoded cache for these files (of these header sizes) at this size; built on first use (by one
    process), reused after, rebuilt when its images no longer match their seal. `stats`: the files' size and
    mtime as listed, which the build holds each file to (None: stat'ed now)."""
    stats = file_stats(root, paths) if stats is None else stats
    folder = decoded_folder(root, paths, size, stats)
    with building(folder):
        found = _open_decoded(folder, len(paths))
        if found is not None:
            return found
        if folder.exists():
            print(f"[bench] decoded cache {folder} is incomplete or altered; building it again", file=sys.stderr)
            shutil.rmtree(folder)
        with atomic_dir(folder) as tmp:  # complete or absent: a crash mid-build leaves only a .partial folder
            index = stored_index(widths, heights, size)
            np.save(tmp / "index.npy", index)
            file = tmp / "pixels.npy"
            np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=(_nbytes(index),))
            reserve(file, file.stat().st_size, "the decoded-image cache")  # a full disk: one line, now
            workers = _workers(len(paths))
            jobs = [(str(root), str(file), str(tmp / "index.npy"), size, *share)
                    for share in _shares(paths, stats, workers)]
            failed = [f for part in _map(_decode_job, jobs, f"decoding images to {size}px", len(paths), workers)
                      for f in part]
            seal(file)
            seal(tmp / "index.npy")
            (tmp / "meta.json").write_text(json.dumps({"size": size, "count": len(paths), "root": str(root),
                                                       "layout": LAYOUT,
                                                       "bad": {str(k): v for k, v in dict(failed).items()}}))
        found = _open_decoded(folder, len(paths))
        if found is None:  # verified before anyone else uses it
            raise RuntimeError(f"the decoded cache {folder} was built but does not verify")
        return found


def _open_decoded(folder: Path, count: int) -> Decoded | None:
    """The cache in `folder` if it is complete (its meta, its index, its buffer's length) and its images
    match their seal."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        index = np.load(folder / "index.npy")
        pixels = np.load(folder / "pixels.npy", mmap_mode="r")
        bad = {int(k): str(v) for k, v in meta["bad"].items()}
    except Exception:  # missing, truncated, not JSON, not .npy: a derived cache is built again
        return None
    if meta.get("count") != count or meta.get("layout") != LAYOUT or index.shape != (count, 3) \
            or pixels.dtype != np.uint8 or pixels.ndim != 1 \
            or pixels.shape[0] != _nbytes(index) \
            or not intact(folder / "index.npy", quick=True) or not intact(folder / "pixels.npy", quick=True):
        return None
    return Decoded(pixels, index, bad, folder)


def files_key(cfg: DataConfig, probe: Probe) -> str:
    """The source's files by name, size and mtime (the key the probe of their headers is stored under, so
    no second pass over the files): when the images change, so does the split's key, and finished cells
    trained on the old ones are not silently reused. Generated data is a function of its config, which the
    split key holds already."""
    return "generated" if cfg.source == "synthetic" else probe.key
