"""What a model sees of a stored image (bench.data.views): whole images in the cache, evaluation as timm's
and torchvision's, random resized crops drawn from the whole image as torchvision draws them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision.transforms import v2

from bench.config import DataConfig
from bench.data import cache, curated, prepare
from bench.data.loaders import ArrayDataset
from bench.data.views import draws_whole
from bench.techniques import build_augment
from tests.support import packed

SHAPES = [(800, 600), (450, 640), (500, 333)]  # landscape, portrait, 3:2: widths x heights of photos


def _photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth colour fields with edges and fine texture, as a photo has: no flat test pattern that any
    resize would leave equal."""
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC),
                       dtype=np.float32)
    yy, xx = np.mgrid[:height, :width]
    stripes = 40 * np.sin(xx / 7.0 + yy / 11.0)[..., None]
    disc = ((xx - width * 0.6) ** 2 + (yy - height * 0.4) ** 2 < (min(width, height) / 5) ** 2)[..., None] * 60
    return np.clip(field + stripes + disc + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """root/<class>/<n>.jpg: photo-like JPEGs of several aspects (quality 92, as cameras write)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(6):
            w, h = SHAPES[i % len(SHAPES)]
            Image.fromarray(_photo(rng, w, h)).save(root / f"c{c}" / f"{i}.jpg", quality=92)
    return root


def _cfg(root, **kw) -> DataConfig:
    return DataConfig(source="folder", root=str(root), split=(0.5, 0.5, 0.0), **kw)


@pytest.mark.parametrize("image_size,crop_pct", [(64, 0.875), (56, 1.0), (48, 0.95), (224, 0.875)])
def test_evaluation_is_timms_and_torchvisions_resize_and_centre_crop_of_the_original(photos, tmp_path,
                                                                                      image_size, crop_pct):
    from timm.data.transforms_factory import transforms_imagenet_eval

    cfg = _cfg(photos, image_size=image_size, crop_pct=crop_pct)
    data = prepare(cfg, 0, tmp_path)
    timm_eval = transforms_imagenet_eval(image_size, crop_pct=crop_pct, use_prefetcher=True)  # uint8 CHW out
    scale = int(image_size / crop_pct)
    tv_eval = v2.Compose([v2.Resize(scale, antialias=True), v2.CenterCrop(image_size)])
    cur = curated(cfg)
    for split in ("train", "val"):
        ds = data.datasets[split]
        ds.transform = None  # the evaluation view of every image
        x, _ = ds.__getitems__(list(range(len(ds))))
        for got, row in zip(x, ds.rows, strict=True):
            with Image.open(photos / cur.samples.paths[row]) as im:
                original = im.convert("RGB")
                want = torch.as_tensor(np.asarray(timm_eval(original))).reshape(got.shape)
                torchvision = tv_eval(v2.functional.pil_to_tensor(original))
            diff = (got.float() - want.float()).abs()
            # the only difference: libjpeg's reduced-scale decoding of a photo 2-8x larger than needed (measured
            # up to 0.71 on average; decoding 4-8x larger ones straight to the size kept gave up to 9)
            assert diff.mean() < 1.0 and diff.quantile(0.99) < 6, (split, row, diff.mean(), diff.quantile(0.99))
            assert (got.float() - torchvision.float()).abs().mean() < 1.0  # torchvision's Resize on the tensor


def test_no_cache_gives_the_cached_pixels_exactly(photos, tmp_path):
    cfg = _cfg(photos, image_size=32)
    cached = prepare(cfg, 0, tmp_path / "a").datasets["val"]
    files = prepare(cfg.model_copy(update={"cache": "none"}), 0, tmp_path / "b").datasets["val"]
    for row in cached.rows:
        assert np.array_equal(cached.stored(row), files.stored(row))
    assert torch.equal(cached.__getitems__([0, 1])[0], files.__getitems__([0, 1])[0])


def test_the_cache_keeps_whole_images_and_plan_knows_their_size(photos):
    cfg = _cfg(photos, image_size=64)
    cur = curated(cfg)
    assert cfg.stored_size == cfg.scale_size == 73
    shapes = {tuple(cur.decoded.index[r, 1:]) for r in cur.rows}
    assert shapes == {(73, 97), (103, 73), (73, 109)}  # 800x600, 450x640, 500x333, shorter side 73, aspect kept
    heads = cache.probe(cur.samples.root, cur.samples.paths)
    counted = 4 * 3 * (73 * 97 + 103 * 73 + 73 * 109)  # by hand: 4 photos of each shape, 3 bytes a pixel
    assert cache.cache_bytes(heads.width, heads.height, 73) == cur.decoded.pixels.nbytes == counted


def test_an_empty_cache_takes_no_bytes():
    assert cache.cache_bytes(np.zeros(0), np.zeros(0), 64) == 0 and cache.stored_index([], [], 64).shape == (0, 3)


@pytest.mark.parametrize("width,height", [(800, 600), (333, 500), (37, 1000), (20, 30), (100, 100)])
def test_stored_shape_truncates_as_torchvisions_resize_and_never_enlarges(width, height):
    size = 64
    h, w = cache.stored_shape(width, height, size)
    if min(width, height) <= size:
        assert (h, w) == (height, width)
    else:
        assert (h, w) == tuple(v2.functional.resize(torch.empty(3, height, width), size).shape[1:])


def test_only_a_leading_random_resized_crop_draws_from_the_whole_image():
    assert draws_whole(build_augment(["rrc", "hflip"], 32))
    assert draws_whole(build_augment("rrc:0.35", 32))
    assert not draws_whole(build_augment(["hflip", "rrc"], 32))
    assert not draws_whole(build_augment("crop_flip", 32))


def _coordinates(width: int, height: int) -> np.ndarray:
    """An image whose red channel is x and green channel y (0..255 across): a crop's pixels tell its window."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8)


def _windows(crops: torch.Tensor) -> np.ndarray:
    """(area share, log aspect, centre x, centre y) of each crop of a _coordinates image, from its pixels."""
    r, g = crops[:, 0].double() / 255, crops[:, 1].double() / 255
    n = crops.shape[-1]
    x0, x1 = r[:, :, 0].mean(1), r[:, :, -1].mean(1)  # first and last pixel centres, as shares of the side
    y0, y1 = g[:, 0, :].mean(1), g[:, -1, :].mean(1)
    w, h = (x1 - x0) * n / (n - 1), (y1 - y0) * n / (n - 1)  # centre-to-centre span -> the window's side
    return np.stack([(w * h).numpy(), torch.log((w * WIDTH) / (h * HEIGHT)).numpy(),
                     ((x0 + x1) / 2).numpy(), ((y0 + y1) / 2).numpy()], 1)


WIDTH, HEIGHT, DRAWS = 480, 300, 1500


def test_training_crops_are_distributed_as_torchvisions_random_resized_crop_of_the_original(tmp_path):
    """bench draws its crops from the whole stored image (shorter side data.cache_size): their area share,
    aspect and position follow torchvision's RandomResizedCrop on the original photo; crops drawn from a
    centre-cropped square (bench before schema 4) would not, and the test tells them apart."""
    size, stored = 32, 96
    original = _coordinates(WIDTH, HEIGHT)
    kept = np.asarray(Image.fromarray(original).resize(cache.stored_shape(WIDTH, HEIGHT, stored)[::-1],
                                                       Image.Resampling.BILINEAR))
    ds = ArrayDataset(packed(tmp_path / "whole", [kept]), np.zeros(DRAWS, dtype=np.int64), np.zeros(DRAWS), size,
                      int(size / 0.875), build_augment("rrc", size), seed=0)
    ours = _windows(ds.augmented([ds.stored(0)] * DRAWS, list(range(DRAWS)), [0] * DRAWS))
    torch.manual_seed(1)
    rrc = v2.RandomResizedCrop(size, antialias=True)
    source = torch.from_numpy(original).permute(2, 0, 1)
    theirs = _windows(torch.stack([rrc(source) for _ in range(DRAWS)]))
    for k, name in enumerate(["area share", "log aspect", "centre x", "centre y"]):
        assert ks_2samp(ours[:, k], theirs[:, k]).pvalue > 1e-3, name
    # the old layout: a centre square of the image, so crops never reach its left and right fifths
    square = _coordinates(WIDTH, HEIGHT)[:, (WIDTH - HEIGHT) // 2:(WIDTH + HEIGHT) // 2]
    old = ArrayDataset(packed(tmp_path / "square", [square]), np.zeros(DRAWS, dtype=np.int64), np.zeros(DRAWS), size,
                       size, build_augment("rrc", size), seed=0)
    centred = _windows(old.augmented([old.stored(0)] * DRAWS, list(range(DRAWS)), [0] * DRAWS))
    assert ks_2samp(centred[:, 2], theirs[:, 2]).pvalue < 1e-6  # measured 3e-44; bench's own: 0.3
