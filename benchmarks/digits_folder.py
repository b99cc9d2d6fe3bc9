"""scikit-learn's bundled handwritten digits (1,797 8x8 images) as an image folder of 32 px RGB PNGs: a real,
offline data set for accuracy checks (docs/performance.md, "What a model sees"). scikit-learn comes with
`.[dev]` (MLflow needs it).

    python benchmarks/digits_folder.py data/digits
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write(root: Path, side: int = 32) -> int:
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray((image / 16 * 255).astype(np.uint8)).resize((side, side), Image.Resampling.NEAREST)
        pixels.convert("RGB").save(folder / f"{i:04d}.png")
    return len(digits.images)


if __name__ == "__main__":
    print(f"{write(Path(sys.argv[1]))} images under {sys.argv[1]}")
