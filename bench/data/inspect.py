"""`bench data inspect`: what the studies computed by hand before training (study 001's Table 1, study
000's mode census and majority baseline), from the same probe and curation the runner uses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import DataConfig
from bench.data import curated


def describe(cfg: DataConfig, head: int = 5) -> dict[str, Any]:
    """Source census (modes, resolutions, bad files) and the curated data's class statistics."""
    cur = curated(cfg)  # builds the decoded cache too: truncated files are only found by decoding them
    samples, probe, kept = cur.source, cur.probe, cur.samples
    readable = probe.bad == ""
    sizes = Counter(zip(probe.width[readable].tolist(), probe.height[readable].tolist(), strict=True))
    counts = np.bincount(kept.labels, minlength=len(kept.classes))
    order = np.argsort(-counts, kind="stable")
    return {
        "source": cfg.source,
        "root": str(samples.root),
        "images": len(samples.paths),
        "classes": len(samples.classes),
        "probed": len(cur.probed.paths),  # modes and resolutions are of these: the classes pruning can keep
        "modes": cur.modes,
        "bad_images": dict(sorted(cur.bad.items())),
        "resolutions": {"distinct": len(sizes), "top": [(f"{w}x{h}", n) for (w, h), n in sizes.most_common(head)]},
        "curation": cur.steps,
        "kept": {
            "images": int(counts.sum()),
            "classes": len(kept.classes),
            "per_class": {"max": int(counts.max()), "min": int(counts.min()), "median": float(np.median(counts)),
                          "mean": float(counts.mean()), "std": float(counts.std())} if len(counts) else {},
            # predicting the largest class for every image (study 000: 5.6%)
            "majority_baseline_accuracy": float(counts.max() / counts.sum()) if counts.sum() else 0.0,
            "head": [(kept.classes[i], int(counts[i])) for i in order[:head]],
            "tail": [(kept.classes[i], int(counts[i])) for i in order[::-1][:head]],
        },
        "class_counts": {kept.classes[i]: int(counts[i]) for i in order},
    }


def curation_table(steps: list[dict]) -> str:
    """Each curation step's setting and its images and classes before -> after, as a GitHub table."""
    from tabulate import tabulate

    return tabulate([[s["step"], s["detail"], f"{s['images'][0]:,} -> {s['images'][1]:,}",
                      f"{s['classes'][0]:,} -> {s['classes'][1]:,}"] for s in steps],
                    headers=["curation step", "setting", "images", "classes"], tablefmt="github")


def curation_summary(cfg: DataConfig) -> str:
    """What `bench plan` prints of a data set: its size, classes and bad files, then each curation step."""
    from rich.filesize import decimal

    cur = curated(cfg)
    store = (f"decoded cache: {decimal(cur.decoded.pixels.nbytes)}, whole images, shorter side {cfg.stored_size} px, "
             f"in {cur.decoded.folder}" if cur.decoded.pixels is not None else "no decoded cache (data.cache = \"none\"): each image is "
             "decoded from its file per batch")
    return (f"data: {cfg.source} {cfg.root or ''} -> {len(cur.samples.paths):,} images, "
            f"{len(cur.samples.classes):,} classes, {len(cur.bad)} bad file(s)\n{store}\n{curation_table(cur.steps)}")


def render(info: dict[str, Any]) -> str:
    from tabulate import tabulate

    k = info["kept"]
    pc = k["per_class"]
    probed = info["probed"]
    lines = [f"{info['source']} data at {info['root']}: {info['images']:,} images, {info['classes']:,} classes"
             + (f"; headers read of the {probed:,} in classes class pruning can keep" if probed < info["images"] else ""),
             "modes: " + ", ".join(f"{m} {n:,}" for m, n in info["modes"].items()),
             f"resolutions: {info['resolutions']['distinct']:,} distinct; most common: "
             + ", ".join(f"{s} ({n:,})" for s, n in info["resolutions"]["top"]),
             f"bad images: {len(info['bad_images'])}"]
    lines += [f"  {p}: {why}" for p, why in list(info["bad_images"].items())[:20]]
    lines += ["", curation_table(info["curation"]), ""]
    if pc:
        lines.append(tabulate([[k["images"], k["classes"], pc["max"], pc["min"], pc["median"], f"{pc['std']:.1f}",
                                f"{100 * k['majority_baseline_accuracy']:.1f}%"]],
                              headers=["images", "classes", "max/class", "min/class", "median", "std",
                                       "majority baseline"], tablefmt="github"))
        lines.append("head: " + ", ".join(f"{c} ({n})" for c, n in k["head"]))
        lines.append("tail: " + ", ".join(f"{c} ({n})" for c, n in k["tail"]))
    return "\n".join(lines)


def plot_histogram(info: dict[str, Any], out: Path) -> Path:
    """The class histogram of the curated data (the same figure `bench report --plots` draws)."""
    from bench.plots import class_histogram

    fig = class_histogram(list(info["class_counts"].values()), list(info["class_counts"]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
