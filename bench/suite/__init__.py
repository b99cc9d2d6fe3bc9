"""A suite file becomes cells: `expansion` (datasets x cells x grid x seeds into validated `Cell`s, labels,
staged parents), `names` (every registry name looked up), `preflight` (files, weights, hub, device and
precision checked before anything is written)."""

from bench.suite.expansion import DATASET, dataset_overrides, expand, link, set_dotted, where_set
from bench.suite.names import check_names
from bench.suite.preflight import preflight

__all__ = ["DATASET", "check_names", "dataset_overrides", "expand", "link", "preflight", "set_dotted", "where_set"]
