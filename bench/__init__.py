"""bench: fair, reproducible benchmarks of image-classification architectures and training techniques."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1  # bump when result.json changes meaning; reports refuse to mix versions
