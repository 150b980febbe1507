"""The report's pictures: PNG bytes, drawn on matplotlib ``Figure`` objects (no pyplot, so no
backend or display is chosen for the process that imports this: a PNG is rendered by Agg).

Bytes, not files: the report names each figure by its content and writes it through gfile.
Classes are named and coloured as the dataset spec says (``DatasetSpec.class_names``,
``palette()``): the bars, the masks and the overlays use the colours a predicted mask has.
"""

import io

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from core import metrics
from core.dataset_spec import DatasetSpec
from transform import palette


def _png(fig) -> bytes:
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    return out.getvalue()


def class_iou_bars(class_iou: list, mean_iou: float, spec: DatasetSpec) -> bytes:
    """Horizontal bars, one per class of ``spec`` in its colour; classes never seen are marked n/a."""
    fig = Figure(figsize=(7, max(2.0, 0.28 * len(class_iou) + 0.6)))
    ax = fig.subplots()
    values = [v if v is not None else 0.0 for v in class_iou]
    colours = spec.class_colours()[: len(values)] / 255.0
    ax.barh(range(len(values)), values, color=colours, edgecolor="black", linewidth=0.5)
    for i, v in enumerate(class_iou):
        ax.text((v or 0.0) + 0.01, i, "n/a" if v is None else f"{v:.3f}", va="center", fontsize=8)
    ax.axvline(mean_iou, color="black", linestyle="--", label=f"mean IoU {mean_iou:.4f}")
    ax.set_yticks(range(len(values)), spec.class_names[: len(values)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("IoU (eval split, original resolution)")
    ax.legend(loc="lower right")
    return _png(fig)


def confusion_heatmap(matrix: np.ndarray, class_names: tuple) -> bytes:
    """Rows (truth) normalised to 1, so every class is readable whatever its pixel share."""
    if len(matrix) != len(class_names):
        raise ValueError(f"a {len(matrix)}x{len(matrix)} confusion matrix for {len(class_names)} class names")
    rows = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(rows > 0, matrix / np.maximum(rows, 1), np.nan)
    fig = Figure(figsize=(8, 7))
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(matrix)), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(matrix)), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.colorbar(image, ax=ax, label="share of the true class's pixels")
    return _png(fig)


def training_curves(epochs: list) -> bytes:
    steps = [row["step"] for row in epochs]
    fig = Figure(figsize=(12, 3.5))
    loss_ax, iou_ax, lr_ax = fig.subplots(1, 3)
    for key, label in (("loss", "train"), ("val_loss", "eval")):
        if any(key in row for row in epochs):
            loss_ax.plot(steps, [row.get(key, np.nan) for row in epochs], marker="o", label=label)
    for key, label in ((metrics.MEAN_IOU, "train"), (metrics.VAL_MEAN_IOU, "eval")):
        if any(key in row for row in epochs):
            iou_ax.plot(steps, [row.get(key, np.nan) for row in epochs], marker="o", label=label)
    lr_ax.plot(steps, [row.get("learning_rate", np.nan) for row in epochs], marker="o")
    for ax, title in (
        (loss_ax, "loss"),
        (iou_ax, "mean IoU (training resolution)"),
        (lr_ax, "learning rate"),
    ):
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax is not lr_ax:
            ax.legend()
    return _png(fig)


def data_summary(split_counts: dict, class_pixels: dict) -> bytes:
    """Examples per split, and the train split's pixels per class (log scale: a background class,
    where the dataset has one, outnumbers the others by orders of magnitude)."""
    fig = Figure(figsize=(12, 3.8))
    split_ax, class_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 4]})
    split_ax.bar(list(split_counts), list(split_counts.values()), color="#4c72b0")
    for i, n in enumerate(split_counts.values()):
        split_ax.text(i, n, str(n), ha="center", va="bottom")
    split_ax.set_title("examples per split")
    names = list(class_pixels)
    class_ax.bar(range(len(names)), [max(class_pixels[n], 0.5) for n in names], color="#55a868")
    class_ax.set_yscale("log")
    class_ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    class_ax.set_title("train pixels per class (Transform's counts)")
    return _png(fig)


def sample_panels(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, spec: DatasetSpec) -> tuple:
    """image, ground truth, prediction, prediction over the image: masks in ``spec``'s colours
    (``palette()``), its background left unpainted in the overlay."""
    colours = spec.palette()
    return (
        image,
        palette.colorize(truth, colours),
        palette.colorize(predicted, colours),
        palette.overlay(image, predicted, colours, background=spec.background_id),
    )


def samples_grid(samples: list, spec: DatasetSpec) -> bytes:
    """One row per eval image: image | ground truth | prediction | prediction over the image,
    masks in ``spec``'s colours."""
    fig = Figure(figsize=(10, 2.6 * len(samples)))
    axes = fig.subplots(len(samples), 4, squeeze=False)
    for row, (name, image_bytes, truth, predicted) in zip(axes, samples, strict=True):
        image = np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB"))
        panels = sample_panels(image, truth, predicted, spec)
        titles = ("image", "ground truth", "prediction", "overlay")
        for ax, panel, title in zip(row, panels, titles, strict=True):
            ax.imshow(panel)
            ax.set_title(f"{name}: {title}" if title == "image" else title, fontsize=8)
            ax.axis("off")
    return _png(fig)
