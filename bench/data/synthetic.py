"""The embedded default data: a deterministic, species-like image set written as real JPEG files.

Each class is a (shape, pattern, pattern frequency) combination drawn on a cluttered background. Colours
are drawn per image from one distribution shared by every class, so the class cannot be read off the mean
colour: a model has to see spatial structure, which is what makes a CNN beat an MLP here and what makes
augmentation matter. Objects vary in position, scale and (a little) rotation; classes are long-tailed
like iNaturalist's. Written once into the cache in ImageFolder layout and reused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from bench.artefacts import building
from bench.config import SyntheticConfig
from bench.data.cachedir import cache_root
from bench.hashing import stable_hash
from bench.store import atomic_dir

GENERATOR = 5  # bump when the pictures change, so old caches are not reused
SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "bar", "star")
DONE = "bench-synthetic.json"
PATTERNS = ("solid", "stripes", "checker", "dots", "rings")


def class_name(c: int) -> str:
    shape = SHAPES[c % len(SHAPES)]
    pattern = PATTERNS[(c // len(SHAPES)) % len(PATTERNS)]
    variant = c // (len(SHAPES) * len(PATTERNS))
    return f"{c:03d}_{shape}_{pattern}{variant or ''}"


def class_sizes(cfg: SyntheticConfig) -> list[int]:
    """Geometric long tail from `imbalance` (largest / smallest), summing exactly to cfg.images."""
    w = cfg.imbalance ** (-np.arange(cfg.classes) / max(1, cfg.classes - 1))
    raw = w / w.sum() * cfg.images
    sizes = np.maximum(1, np.floor(raw)).astype(int)
    for i in np.argsort(raw - np.floor(raw))[::-1][: max(0, cfg.images - sizes.sum())]:
        sizes[i] += 1  # largest remainders first
    while sizes.sum() > cfg.images:  # only when images < classes * 1 after flooring at 1
        sizes[np.argmax(sizes)] -= 1
    return sizes.tolist()


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = np.hypot(u, v)
    if shape == "disc":
        return r < 1
    if shape == "square":
        return np.maximum(abs(u), abs(v)) < 0.85
    if shape == "triangle":
        return (v < 0.75) & (v > 2 * abs(u) - 0.95)
    if shape == "ring":
        return (r < 1) & (r > 0.55)
    if shape == "cross":
        return (np.minimum(abs(u), abs(v)) < 0.3) & (np.maximum(abs(u), abs(v)) < 1)
    if shape == "diamond":
        return abs(u) + abs(v) < 1.05
    if shape == "bar":
        return (abs(u) < 1) & (abs(v) < 0.4)
    if shape == "star":
        angle = np.arctan2(v, u)
        return r < 0.55 + 0.4 * np.cos(5 * angle)
    raise ValueError(shape)


def _pattern(pattern: str, u: np.ndarray, v: np.ndarray, freq: float) -> np.ndarray:
    if pattern == "solid":
        return np.zeros_like(u, dtype=bool)
    if pattern == "stripes":
        return np.sin(freq * u) > 0
    if pattern == "checker":
        return (np.sin(freq * u) > 0) ^ (np.sin(freq * v) > 0)
    if pattern == "dots":
        return (np.sin(freq * u) * np.sin(freq * v)) > 0.5
    if pattern == "rings":
        return np.sin(freq * np.hypot(u, v)) > 0
    raise ValueError(pattern)


def render(c: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One HxWx3 uint8 image of class c."""
    shape = SHAPES[c % len(SHAPES)]
    pattern = PATTERNS[(c // len(SHAPES)) % len(PATTERNS)]
    variant = c // (len(SHAPES) * len(PATTERNS))
    freq = 6.0 + 3.0 * variant
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1  # [-1, 1]
    # background: a random colour, a smooth gradient and blotches (clutter, like leaves and soil)
    bg = rng.uniform(0, 255, 3)
    grad = rng.uniform(-40, 40, 3)
    img = bg + grad * x[..., None]
    for _ in range(3):
        cx, cy, s = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.15, 0.4)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
        img += blob[..., None] * rng.uniform(-60, 60, 3)
    # the organism: shape filled with two colours in a pattern; upright, mildly rotated
    scale = rng.uniform(0.4, 0.65)
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    theta = rng.uniform(-0.45, 0.45)
    xr, yr = (x - cx) / scale, (y - cy) / scale
    u = np.cos(theta) * xr + np.sin(theta) * yr
    v = -np.sin(theta) * xr + np.cos(theta) * yr
    mask = _shape_mask(shape, u, v)
    # the organism contrasts with its background (complementary colour), as a photographed one mostly does;
    # both are uniform over the colour cube, so every class has the same mean colour
    fg1 = np.clip(255 - bg + rng.normal(0, 25, 3), 0, 255)
    fg2 = rng.uniform(0, 255, 3)
    fg = np.where(_pattern(pattern, u, v, freq)[..., None], fg2, fg1)
    img = np.where(mask[..., None], fg, img)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(cfg: SyntheticConfig, root: Path | None = None) -> Path:
    """Write the data set as ImageFolder JPEGs (once, by one process: a finished folder is reused); returns
    its root."""
    spec = {"generator": GENERATOR, **cfg.model_dump(mode="json")}
    root = Path(root) if root is not None else cache_root() / "synthetic" / stable_hash(spec, 16)
    with building(root):
        if _complete(root, spec):
            return root
        if root.exists():  # another generator's images, or an altered folder: never mixed with ours
            shutil.rmtree(root)
        with atomic_dir(root) as tmp:  # whole folder at once: an interrupted generation never looks finished
            rng = np.random.default_rng([cfg.seed, GENERATOR])
            for c, n in enumerate(class_sizes(cfg)):
                folder = tmp / class_name(c)
                folder.mkdir(parents=True)
                for i in range(n):
                    Image.fromarray(render(c, cfg.size, rng)).save(folder / f"{i:05d}.jpg", quality=90)
            if _count(tmp) != sum(class_sizes(cfg)):  # verified before it is published, never after
                raise RuntimeError(f"synthetic data in {tmp} is incomplete")
            (tmp / DONE).write_text(json.dumps({**spec, "files": sum(class_sizes(cfg))}))
    return root


def _count(root: Path) -> int:
    return sum(1 for _ in root.glob("*/*.jpg"))


def _complete(root: Path, spec: dict) -> bool:
    """Finished by this generator with these settings, and still every image there."""
    try:
        done = json.loads((root / DONE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(done, dict) and done.pop("files", None) == _count(root) and done == spec
