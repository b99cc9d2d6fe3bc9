"""bench: fair, reproducible benchmarks of image-classification architectures and training techniques."""

import os

# MKL lowers a matrix product's thread count at run time by default (MKL_DYNAMIC), and with it the order of
# its sums: a cell's last bits, and from them its chosen epoch, would depend on what else the machine was
# doing (a cell run after another in one `bench run` trained otherwise than alone). Set before torch first
# calls MKL, here and so in every process bench starts, unless the user chose otherwise.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

__version__ = "0.1.0"
SCHEMA_VERSION = 4  # bump when result.json changes meaning; reports refuse to mix versions
# 2: timm's Mixup, dropout before frozen layers off, last_conv in execution order (numbers differ from 1)
# 3: each image's augmentation drawn from (seed, epoch, place in the epoch): augmented cells' numbers differ from 2
