"""``index.html``: the report page. The numbers are in elements with ids, so tests (and users'
scripts) can read them from the rendered page; images sit beside the page, referenced
relatively, so the directory can be copied or served as it is."""

import html

import numpy as np

from components.segmentation_example_gen import pixels, sources
from core import artifacts, features, metrics

# The report's figures, by the key report.json names each one's file under.
CLASS_IOU_FIGURE = metrics.CLASS_IOU
CONFUSION_FIGURE = metrics.CONFUSION_MATRIX
SAMPLES_FIGURE = "samples"
TRAINING_FIGURE = "training_curves"
DATA_FIGURE = "data"
# The keys of report.json's "ingestion" (``component.ingestion_of``): each split's
# ``pixels.census``, {folder: ``sources.Unread.to_json()``} and the data warnings.
INGESTION_PIXELS = "pixels"
INGESTION_UNREAD = "unread_files"
INGESTION_WARNINGS = "warnings"

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } .muted { color: #666; }
.verdict { padding: 0.8em 1em; border-radius: 6px; margin: 1em 0; }
.blessed { background: #e3f4e1; border: 1px solid #5a5; }
.rejected { background: #fbe5e1; border: 1px solid #c55; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } img { max-width: 100%; }
.scores span { font-size: 1.4em; font-weight: bold; margin-right: 1.5em; }
.warnings { background: #fdf3d8; border: 1px solid #c9a23a; }
"""

# Counts the images that decoded, so a headless browser's DOM dump shows whether they all did.
SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter(function (i) { return i.naturalWidth > 0; }).length;
});
"""


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _slice_rows(slices: list, class_names: list) -> str:
    rows = []
    for s in slices:
        value = s["value"]
        label = value
        if s["feature"] == features.CLASSES_PRESENT_KEY and 0 <= int(value) < len(class_names):
            label = f"{value} ({class_names[int(value)]})"
        rows.append(
            f"<tr><td>{html.escape(s['feature'])}</td><td>{html.escape(str(label))}</td>"
            f"<td class='num'>{s['examples']}</td><td class='num'>{_fmt(s[metrics.MEAN_IOU])}</td>"
            f"<td class='num'>{_fmt(s[metrics.PIXEL_ACCURACY])}</td></tr>"
        )
    return "\n".join(rows)


def _change_cells(evaluation: dict, overall: dict, c: int, name: str) -> str:
    """Against the blessed baseline (when there was one): its IoU of class ``c``, the change, and
    whether the per-class guard held it, failed it or exempted it (too few labelled pixels)."""
    baseline = evaluation.get("baseline_class_iou")
    if baseline is None:
        return ""
    now, before = overall[metrics.CLASS_IOU][c], baseline[c]
    change = None if now is None or before is None else now - before
    matrix, floor = overall.get(metrics.CONFUSION_MATRIX), evaluation.get("min_class_pixels")
    labelled = None if matrix is None else int(np.asarray(matrix)[c].sum())
    guard = "held" if floor is not None else "n/a"
    if floor is not None and labelled is not None and labelled < floor:
        guard = f"exempt ({labelled} px &lt; {floor})"
    if name in evaluation.get("guard_failed", []):
        guard = "FAILED"
    shown = "n/a" if change is None else f"{change:+.4f}"
    return f"<td class='num'>{_fmt(before)}</td><td class='num change'>{shown}</td><td>{guard}</td>"


def _gate_section(gate) -> str:
    """The data gate: drift since the previous span (which feature moved, by how much) and the
    anomalies it let through; nothing for a report made without the gate's decision."""
    if gate is None:
        return ""
    rows = [
        f"<tr><td>{kind}</td><td>{html.escape(split)}</td><td>{html.escape(r['feature'])}</td>"
        f"<td>{html.escape(r['description'])}</td></tr>"
        for kind, key in (("drift", "drift"), ("anomaly", "anomalies"))
        for split, found in sorted((gate.get(key) or {}).items())
        for r in found
    ]
    table = (
        "<table id='gate'><tr><th>kind</th><th>split</th><th>feature</th><th>finding</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else ""
    )
    note = html.escape(gate.get("drift_note") or "")
    return f"<h2>Data gate</h2><p id='drift-note'>Drift: {note}</p>{table}"


def _reason(reason) -> str:
    return f": {html.escape(reason)}" if reason else ""


def _serving_section(validation) -> str:
    """What loading the candidate as TF Serving does showed: load time, latency per image, peak
    memory and how many pixels matched the Evaluator's; or why it was refused."""
    if validation is None:
        return ""
    if not validation["validated"]:
        reason = html.escape(validation.get("reason") or "TFX's InfraValidator refused it (see its log)")
        return f"<h2>Serving validation</h2><p id='serving-validation'>Not validated: {reason}</p>"
    if "load_seconds" not in validation:
        return "<h2>Serving validation</h2><p id='serving-validation'>Loaded and answered by TF Serving.</p>"
    same = validation["pixels"] - validation["differing_pixels"]
    return (
        "<h2>Serving validation</h2><p id='serving-validation'>Loaded by TF's SavedModel bundle loader in "
        f"<b>{validation['load_seconds']:.2f} s</b>; one image per request after the warm-up: "
        f"<b>{validation['latency_p50_ms']:.1f} ms</b> p50, <b>{validation['latency_p99_ms']:.1f} ms</b> "
        f"p99; peak memory <b>{validation['peak_memory_mb']:.0f} MB</b>; {same} of "
        f"{validation['pixels']} pixels as the Evaluator scored them.</p>"
    )


def _percent(fraction) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.2f}%"


def _ingestion_section(ingestion) -> str:
    """Pixels per class of each split as ingestion counted them (at the images' original
    resolution; the Data figure's are Transform's), the ignored pixels' share of the mask
    pixels, the data warnings and the files no source read; nothing for Examples made before
    ingestion counted."""
    if ingestion is None:
        return ""
    census = ingestion[INGESTION_PIXELS]

    def cells(row: pixels.Row) -> str:
        return "".join(
            f"<td class='num'>{count}</td><td class='num'>{_percent(share)}</td>"
            for count, share in row.cells
        )

    rows = "".join(
        f"<tr data-class='{html.escape(row.name)}'><td>{'' if row.class_id is None else row.class_id}</td>"
        f"<td>{html.escape(row.label)}</td>{cells(row)}</tr>"
        for row in pixels.rows(census)
    )
    heads = "".join(f"<th>{html.escape(split)} pixels</th><th>share</th>" for split in census)
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in ingestion[INGESTION_WARNINGS])
    unread = "".join(
        f"<tr><td>{html.escape(folder)}</td><td class='num'>{found[sources.UNREAD_COUNT]}</td>"
        f"<td>{html.escape(', '.join(found[sources.UNREAD_NAMES]))}</td></tr>"
        for folder, found in sorted(ingestion[INGESTION_UNREAD].items())
    )
    ignored = _percent(pixels.ignored_fraction(census[features.TRAIN_SPLIT]))
    return (
        "<h2>Data at ingestion</h2>"
        + (
            f"<div class='verdict warnings' id='data-warnings'>Warnings:<ul>{warnings}</ul></div>"
            if warnings
            else ""
        )
        + f"<p>Ignored: <b id='ignored-share'>{ignored}</b> of the train split's mask pixels. A class's "
        "share is of the labelled pixels; counted at the images' original resolution.</p>"
        + f"<table id='pixels'><tr><th>id</th><th>class</th>{heads}</tr>{rows}</table>"
        + (
            "<table id='unread-files'><tr><th>folder</th><th>files not read</th><th>first names</th></tr>"
            f"{unread}</table>"
            if unread
            else ""
        )
    )


def render(report: dict) -> str:
    """``report``: the dict ``component.build`` assembles (also written as ``report.json``); its
    ``class_names`` are the dataset spec's."""
    class_names = report["class_names"]
    overall = report["evaluation"]["overall"]
    decision = report["decision"]
    if decision[artifacts.BLESSED]:
        pushed = decision.get(artifacts.PUSHED_VERSION)
        where = html.escape(decision.get(artifacts.PUSHED_DESTINATION, ""))
        verdict = (
            "<div class='verdict blessed' id='decision'>Blessed"
            + (f"; pushed as version <b id='pushed-version'>{pushed}</b> to <code>{where}</code>"
               if pushed else f"; not pushed{_reason(decision.get(artifacts.NOT_PUSHED_REASON))}")
            + "</div>"
        )  # fmt: skip
    else:
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in decision["reasons"])
        verdict = (
            f"<div class='verdict rejected' id='decision'>Not blessed, not pushed:<ul>{reasons}</ul></div>"
        )
    class_rows = "\n".join(
        f"<tr data-class='{html.escape(name)}'><td>{c}</td><td>{html.escape(name)}</td>"
        f"<td class='num'>{_fmt(v)}</td>{_change_cells(report['evaluation'], overall, c, name)}</tr>"
        for c, (name, v) in enumerate(zip(class_names, overall[metrics.CLASS_IOU], strict=True))
    )
    baseline = report["evaluation"].get("baseline_class_iou") is not None
    change_heads = "<th>baseline</th><th>change</th><th>guard</th>" if baseline else ""
    figures = report["figures"]

    def figure(key: str, title: str) -> str:
        return f"<h2>{title}</h2><img src='{figures[key]}' alt='{title}'>" if key in figures else ""

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(report['pipeline_name'])} run report</title>
<style>{STYLE}</style><script>{SCRIPT}</script></head>
<body>
<h1>{html.escape(report['pipeline_name'])}: run report</h1>
<p class="muted">Model <code>{html.escape(report['model_uri'])}</code>, dataset
<b id="dataset">{html.escape(report['dataset'])}</b> ({len(class_names)} classes)<br>
Evaluated on {overall['examples']} eval images at their original resolution, void (255) ignored.</p>
{verdict}
{_serving_section(report.get('serving_validation'))}
<div class="scores">
<span>mean IoU <b id="mean-iou">{_fmt(overall[metrics.MEAN_IOU])}</b></span>
<span>pixel accuracy <b id="pixel-accuracy">{_fmt(overall[metrics.PIXEL_ACCURACY])}</b></span>
<span>frequency-weighted IoU <b id="fw-iou">{_fmt(overall[metrics.FREQUENCY_WEIGHTED_IOU])}</b></span>
</div>
{figure(CLASS_IOU_FIGURE, 'IoU per class')}
<table id="class-iou"><tr><th>id</th><th>class</th><th>IoU</th>{change_heads}</tr>
{class_rows}
</table>
{figure(CONFUSION_FIGURE, 'Confusion matrix')}
{figure(SAMPLES_FIGURE, 'Eval samples: image | ground truth | prediction | overlay')}
<h2>Slices</h2>
<table id="slices">
<tr><th>feature</th><th>value</th><th>images</th><th>mean IoU</th><th>pixel accuracy</th></tr>
{_slice_rows(report['evaluation']['slices'], class_names)}
</table>
{figure(TRAINING_FIGURE, 'Training')}
{figure(DATA_FIGURE, 'Data')}
{_ingestion_section(report.get('ingestion'))}
{_gate_section(report.get('data_gate'))}
</body></html>
"""
