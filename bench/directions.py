"""Which way is better: each metric column's direction (reports sort and bold by it) and train.monitor's
(early stopping and the plateau schedule read it). Plain data, no torch: a report needs it without loading
what computes the metrics."""

from __future__ import annotations

# metric -> True when higher is better; report columns sort and bold by their own direction
HIGHER_IS_BETTER = {
    "top1_error": False, "top5_error": False, "loss": False,
    "f1_macro": True, "f1_weighted": True, "auc_macro": True, "map": True,
    "train_time_s": False, "time_per_epoch_s": False, "peak_rss_mb": False, "peak_rss_anon_mb": False,
    "peak_cuda_mb": False, "peak_cuda_reserved_mb": False,
    "train_images_per_s": True, "eval_images_per_s": True, "params_total": False, "params_trainable": False,
    "gflops_forward": False, "gflops_per_s": True, "time_to_target_s": False, "compile_time_s": False,
    # a tuned contender's search: fewer trials or pruned ones are not better, but "lower" keeps them sortable
    "trials": False, "pruned": False, "tuning_time_s": False,
}


def monitored(row: dict, monitor: str) -> float:
    """The figure train.monitor names in an epoch's history row (val_accuracy is 1 - val_error)."""
    return 1 - row["val_error"] if monitor == "val_accuracy" else row[monitor]


def maximises(monitor: str, mode: str) -> bool:
    """Whether higher is better for train.monitor under train.mode ("auto": only val_accuracy)."""
    return mode == "max" or (mode == "auto" and monitor == "val_accuracy")
