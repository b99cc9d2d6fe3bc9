"""bench: fair, reproducible benchmarks of image-classification architectures and training techniques."""

__version__ = "0.1.0"
SCHEMA_VERSION = 3  # bump when result.json changes meaning; reports refuse to mix versions
# 2: timm's Mixup, dropout before frozen layers off, last_conv in execution order (numbers differ from 1)
# 3: each image's augmentation drawn from (seed, epoch, place in the epoch): augmented cells' numbers differ from 2
