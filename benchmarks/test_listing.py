"""What a cell of a run no longer spends on its data's files (issue 19): listing the source and stat'ing every
file, against loading the run's listing (bench.data.listing).

50,000 files in 100 class folders (empty: no image is read, only names and stats), under pytest's temporary
folder (on this VM a local disk), warm in the page cache: the cheapest case for listing them again, which a
network file system makes dearer.
Also timed, and left per cell: the caches' key over the names and stats (hashed as JSON).
Target: loading the listing at least MIN_SPEEDUP x faster than listing and stat'ing the files.
"""

from __future__ import annotations

import time

import pytest

from bench.config import DataConfig
from bench.data import cache, listing
from bench.data.sources import read_source

CLASSES, PER_CLASS, MIN_SPEEDUP = 100, 500, 5.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    for c in range(CLASSES):
        (root / f"species_{c:03d}").mkdir()
        for i in range(PER_CLASS):
            (root / f"species_{c:03d}" / f"{i:05d}.jpg").touch()
    return root


def _best(fn, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_loading_the_runs_listing_vs_listing_the_files_per_cell(benchmark, folder, tmp_path):
    cfg = DataConfig(source="folder", root=str(folder))
    samples = read_source(cfg)  # and the page cache warmed
    assert len(samples.paths) == CLASSES * PER_CLASS
    listing.save(tmp_path / f"{listing.source_key(cfg)}.npz", samples)
    listed = _best(lambda: read_source(cfg))
    loaded = benchmark.pedantic(lambda: listing.listed(cfg, tmp_path), rounds=3, iterations=1)
    assert loaded.paths == samples.paths and (loaded.stats == samples.stats).all()
    load = benchmark.stats.stats.min
    key = _best(lambda: cache._key(samples.root, samples.paths, samples.stats))
    n = len(samples.paths)
    benchmark.extra_info.update(files=n, list_and_stat_s=round(listed, 4), load_listing_s=round(load, 4),
                                key_s=round(key, 4), speedup=round(listed / load, 2),
                                list_and_stat_us_per_file=round(listed / n * 1e6, 2),
                                load_us_per_file=round(load / n * 1e6, 2), key_us_per_file=round(key / n * 1e6, 2))
    print(f"\n{n:,} files: listed and stat'ed {listed:.3f} s ({listed / n * 1e6:.2f} us a file), the run's listing "
          f"loaded {load:.3f} s ({load / n * 1e6:.2f} us), {listed / load:.1f}x; the caches' key {key:.3f} s")
    assert listed / load >= MIN_SPEEDUP
