"""The report's HTML: one page of sections (SECTIONS, in order) from a RunRecord and the names of its pictures.
Tables only state what the record holds; nothing here reads files or draws."""

from __future__ import annotations

import html
import json
import os

from components.data_gate.executor import name_spans
from components.study_evaluator.executor import REFINED, SLICE_LEVEL
from ich_model.constants import ABBREVIATIONS, ANY, LABELS
from ich_model.members import CHECKPOINT_METRIC
from ich_model.metrics import WEIGHTED_LOG_LOSS
from ich_model.operating_points import LEVELS, STUDY_LEVEL
from ich_model.serving import PROBABILITIES
from pipeline.figures import (
    CONTEXT,
    ENSEMBLE,
    MACRO_AUC,
    SLICE_MAX,
    STUDY_HEAD,
    TRIAGE,
    class_key,
    level_slice,
    metric_value,
    model_figures,
    overall_slice,
    share_with_interval,
    undefined_note,
)
from pipeline.report.data import RunRecord, flagged_shares

# Sections of the page, in order: (anchor, heading). Tests check that each is present.
SECTIONS = (
    ("decision", "Blessing decision"),
    ("models", "Ensemble against its members and the study model"),
    ("studies", "Study level"),
    ("operating", "Operating points"),
    ("curves", "ROC and precision-recall curves"),
    ("calibration", "Calibration"),
    ("confusion", "Confusion counts at the operating threshold"),
    ("slices", "Slices"),
    ("ood", "Out-of-distribution score"),
    ("training", "Training curves"),
    ("ingestion", "Ingestion"),
    ("drift", "Drift from the training window"),
)


def _cell(value: float | None, digits: int = 4, css: str = "") -> str:
    text = "n/a" if value is None else f"{value:.{digits}f}"
    return f'<td class="num {css}">{text}</td>'


def _table(headers: list[str], rows: list[str], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _decision_section(record: RunRecord) -> str:
    summary = record.summary
    verdict = "blessed" if summary["blessed"] else "not blessed"
    parts = [f'<p class="verdict {"good" if summary["blessed"] else "bad"}">{verdict}: '
             f'{html.escape(summary["reason"])}</p>',
             f'<p>Pushed to: <code>{html.escape(summary["pushed_to"] or "nothing pushed")}</code></p>',
             f'<p>Compared with: <code>{html.escape(summary["baseline"] or "no blessed model yet")}</code></p>']
    now = model_figures(level_slice(record.study_metrics, SLICE_LEVEL).get(REFINED, {}))
    before = model_figures(record.baseline_metrics.get(REFINED, {})) if record.baseline_metrics else {}
    rows = []
    for name, title, higher_is_better in ([(label, f"AUC {label}", True) for label in LABELS]
                                          + [(WEIGHTED_LOG_LOSS, "weighted log loss", False)]):
        change = None if now[name] is None or before.get(name) is None else now[name] - before[name]
        worse = change is not None and (change < 0 if higher_is_better else change > 0)
        rows.append(f"<tr><td>{title}</td>{_cell(before.get(name))}{_cell(now[name])}"
                    f"{_cell(change, css='bad' if worse else '')}</tr>")
    parts.append(_table(["metric (study model, eval slices)", "baseline", "candidate", "change"], rows))
    parts.append("<p>n/a: the evaluated slices hold no positive (or no negative) of that label, so its AUC is "
                 "undefined; TFMA reports 0 for it, which is what the gate compares.</p>")
    return "".join(parts)


def _models_section(record: RunRecord, image: str) -> str:
    metrics = record.summary["metrics"]
    columns = [*LABELS, MACRO_AUC, WEIGHTED_LOG_LOSS]
    best_member = max((m for m in metrics if m not in (ENSEMBLE, CONTEXT)),
                      key=lambda m: metrics[m].get(MACRO_AUC) or -1.0, default=None)
    rows = []
    for model, figures in metrics.items():
        css = ' class="ensemble"' if model == ENSEMBLE else ""
        rows.append(f"<tr{css}><td>{html.escape(model)}</td>" + "".join(_cell(figures.get(c)) for c in columns)
                    + "</tr>")
    note = ""
    if best_member is not None:
        ensemble_auc = metrics[ENSEMBLE].get(MACRO_AUC)
        best_auc = metrics[best_member].get(MACRO_AUC)
        if ensemble_auc is not None and best_auc is not None:
            word = "at least as good as" if ensemble_auc >= best_auc else "below"
            note = (f"<p>The ensemble's macro AUC ({ensemble_auc:.4f}) is {word} its best member's "
                    f"({best_member}, {best_auc:.4f}).</p>")
    undefined = undefined_note(metrics)
    if undefined:
        note += f"<p>{html.escape(undefined)}</p>"
    context, ensemble = metrics.get(CONTEXT, {}), metrics.get(ENSEMBLE, {})
    if context.get(WEIGHTED_LOG_LOSS) is not None and ensemble.get(WEIGHTED_LOG_LOSS):
        note += (f"<p>The study model's refined output ({CONTEXT}) reads each slice with its neighbours; its "
                 f"weighted log loss is {context[WEIGHTED_LOG_LOSS] / ensemble[WEIGHTED_LOG_LOSS]:.2f}x the "
                 "ensemble's on the same slices.</p>")
    headers = ["model", *(ABBREVIATIONS[label] + " AUC" for label in LABELS), "macro AUC", "wLogLoss"]
    return note + _table(headers, rows) + f'<img src="{image}" alt="AUC per label, ensemble, members, context">'


def _studies_section(record: RunRecord, strips: str | None) -> str:
    """Per study (label: any slice positive): the study head against the slice ensemble's maximum; example studies
    slice by slice."""
    study = record.summary.get("study") or {}
    if not study:
        return "<p>This run has no study-level evaluation.</p>"
    strip = "" if strips is None else f'<img src="{strips}" alt="example studies, probability per slice">'
    rows = []
    for label in LABELS:
        cells = "".join(_cell(study[name].get(label)) for name in (STUDY_HEAD, SLICE_MAX))
        rows.append(f"<tr><td>{label}</td>{cells}</tr>")
    rows.append("<tr><td>macro AUC</td>" + "".join(_cell(study[name].get(MACRO_AUC)) for name in (STUDY_HEAD,
                                                                                                 SLICE_MAX))
                + "</tr>")
    triage = [f"<tr><td>{html.escape(name.replace('_', ' '))}</td>"
              + "".join(_cell(study[model][name][ANY]) for model in (STUDY_HEAD, SLICE_MAX)) + "</tr>"
              for name in TRIAGE]
    count = study[STUDY_HEAD].get("studies")
    return (f"<p>{'n/a' if count is None else int(count)} eval studies; a study is positive for a label when any "
            "of its slices is. The study head reads the whole study; the slice maximum is the ensemble's highest "
            "slice probability.</p>"
            + _table(["AUC", STUDY_HEAD, SLICE_MAX], rows)
            + f"<p>Operating points for <code>{ANY}</code>, the triage question:</p>"
            + _table([ANY, STUDY_HEAD, SLICE_MAX], triage) + strip)


def _share_cell(share: float | None, interval) -> str:
    return f'<td class="num">{share_with_interval(share, interval)}</td>'


def _operating_section(record: RunRecord, image: str | None) -> str:
    """Per label and level, the study model's threshold and what it gives on the eval split; the ROC per study."""
    points = record.summary.get("operating_points")
    curves = "" if image is None else f'<img src="{image}" alt="ROC per study with the study operating points">'
    if not points:
        return ("<p>The study model of this run has no operating points (exported before they were chosen).</p>"
                + curves)
    rows = []
    for label in LABELS:
        cells = []
        for level in LEVELS:
            point = points[level][label]
            threshold, found = point["threshold"], point["true_positives"]
            positives = found + point["false_negatives"]
            cells += [f'<td class="num">{"none" if threshold is None else f"{threshold:.4g}"}</td>',
                      f'<td class="num">{found} of {positives}</td>',
                      _share_cell(point["sensitivity"], point["sensitivity_interval"]),
                      _share_cell(point["specificity"], point["specificity_interval"])]
        rows.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    targets = points["target_sensitivity"]
    headers = ["label", *(f"{level} {name}" for level in LEVELS for name in (
        "threshold", "found", "sensitivity [95% CI]", "specificity [95% CI]"))]
    return (f"<p>A slice or a study is flagged for a label when the study model's probability reaches the label's "
            f"threshold. Each threshold is the highest that finds at least {targets[SLICE_LEVEL]:.0%} of the "
            f"positive slices or {targets[STUDY_LEVEL]:.0%} of the positive studies of the {points['chosen_on']}; "
            "the figures are measured there too (TFMA's counts of the flags), so the sensitivity meets its target "
            "by construction and the Wilson intervals say how far it may be on new studies of this number. "
            "<code>none</code>: the split held no positive, and the default threshold stands in.</p>"
            + _table(headers, rows) + curves)


def _confusion_section(record: RunRecord) -> str:
    overall = overall_slice(record.metrics).get(PROBABILITIES, {})
    rows = []
    for index, label in enumerate(LABELS):
        m = overall.get(class_key(index), {})
        tp, fp, tn, fn = (metric_value(m, name) for name in ("true_positives", "false_positives", "true_negatives",
                                                             "false_negatives"))
        counts = "".join(f'<td class="num">{"n/a" if v is None else int(v)}</td>' for v in (tp, fn, fp, tn))
        rows.append(f"<tr><td>{label}</td>{counts}{_cell(metric_value(m, 'recall'), 3)}"
                    f"{_cell(metric_value(m, 'specificity'), 3)}{_cell(metric_value(m, 'precision'), 3)}</tr>")
    threshold = "n/a" if record.threshold is None else f"{record.threshold:g}"
    return (f"<p>Ensemble, overall slice, a slice called positive when its probability is at least "
            f"{threshold}.</p>"
            + _table(["label", "true pos.", "false neg.", "false pos.", "true neg.", "sensitivity", "specificity",
                      "precision"], rows))


def _slice_name(key) -> str:
    return " & ".join(f"{feature} = {value}" for feature, value in key) or "overall"


def _slice_order(item) -> tuple:
    """Overall first, then the feature slices by name."""
    return len(item[0]) > 0, str(item[0])


def _slices_section(record: RunRecord) -> str:
    slices = sorted(record.metrics, key=_slice_order)
    table = []
    for key, metrics in slices:
        ensemble = metrics.get(PROBABILITIES, {})
        count = metric_value(ensemble.get(class_key(0), {}), "example_count")
        figures = model_figures(ensemble)
        aucs = [figures[label] for label in LABELS]
        table.append((key, count, aucs))
    # The weakest slice per label: the lowest AUC among the feature slices (the overall row is not a candidate).
    weakest = {}
    for i in range(len(LABELS)):
        values = [(aucs[i], n) for n, (key, _, aucs) in enumerate(table) if key and aucs[i] is not None]
        if values:
            weakest[i] = min(values)[1]
    rows = []
    for n, (key, count, aucs) in enumerate(table):
        cells = "".join(_cell(auc, 3, "weakest" if weakest.get(i) == n else "") for i, auc in enumerate(aucs))
        count_text = "n/a" if count is None else str(int(count))
        rows.append(f'<tr><td>{html.escape(_slice_name(key))}</td><td class="num">{count_text}</td>{cells}</tr>')
    return ("<p>Ensemble AUC per label on every slice the Evaluator computed; in each label's column the weakest "
            "slice is highlighted. n/a: the slice has no positive (or no negative) of that label.</p>"
            + _table(["slice", "slices (examples)", *(ABBREVIATIONS[label] for label in LABELS)], rows, "slices"))


def _flagged_share_table(record: RunRecord) -> str:
    """The share of each slice that the ensemble flags out of distribution, when the Evaluator computed it."""
    shares = sorted(flagged_shares(record.metrics), key=_slice_order)
    if not shares:
        return ""
    rows = [f"<tr><td>{html.escape(_slice_name(key))}</td>"
            f'<td class="num">{"n/a" if share is None else f"{share:.1%}"}</td></tr>' for key, share in shares]
    return ('<h3>Flagged out of distribution</h3><p>The share of each slice\'s examples that the ensemble flags '
            'out of distribution (its score above the threshold); a span or scanner group far '
            "above the eval split's share holds images unlike the training slices.</p>"
            + _table(["slice", "flagged"], rows, "flagged"))


def _ood_section(record: RunRecord, image: str | None) -> str:
    if record.ood is None or image is None:
        score = "<p>This model has no out-of-distribution score.</p>"
    else:
        score = (f"<p>The ensemble flags a slice when its out-of-distribution score is above "
                 f"{record.ood['threshold']:.4g}, set on the eval split, of which it flags "
                 f"{record.ood['flagged_share_eval']:.1%}.</p>"
                 f'<img src="{image}" alt="histogram of the eval split\'s out-of-distribution scores">')
    return score + _flagged_share_table(record)


def _training_section(record: RunRecord, image: str) -> str:
    rows = []
    for name, trainer in record.trainers.items():
        evaluations, kept_loss, kept_auc = trainer.kept()
        start = f"warm start from <code>{html.escape(trainer.warm_start)}</code>" if trainer.warm_start \
            else "from scratch"
        rows.append(f"<tr><td>member {name}</td><td>{start}</td><td class=\"num\">{evaluations}</td>"
                    f"{_cell(kept_loss)}{_cell(kept_auc)}</tr>")
    headers = ["member", "start", "evaluations", f"kept: validation {CHECKPOINT_METRIC}", "kept: validation macro AUC"]
    return _table(headers, rows) + f'<img src="{image}" alt="training curves">'


def _ingestion_section(ingestion: dict) -> str:
    counts = [("span", ingestion.get("span")), ("files found", ingestion.get("input_files")),
              ("slices ingested", ingestion.get("ingested")), ("files rejected", ingestion.get("rejected_total")),
              ("labelled images without a file", ingestion.get("missing_files"))]
    parts = [_table(["", "count"], [f'<tr><td>{name}</td><td class="num">{value}</td></tr>'
                                    for name, value in counts])]
    for key, title in (("rejected", "Rejected files by reason"), ("warnings", "Warnings by kind"),
                       ("label_problems", "Label problems by kind")):
        by_reason = ingestion.get(key) or {}
        rows = [f'<tr><td>{html.escape(str(reason))}</td><td class="num">{count}</td></tr>'
                for reason, count in by_reason.items()]
        parts.append(f"<h3>{title}</h3>" + (_table(["reason", "count"], rows) if rows else "<p>none</p>"))
    listed = ingestion.get("rejected_files") or []
    if listed:
        items = "".join(f"<li><code>{html.escape(json.dumps(entry))}</code></li>" for entry in listed[:50])
        more = f"<p>... and {len(listed) - 50} more in the report file.</p>" if len(listed) > 50 else ""
        parts.append(f"<h3>Rejected files</h3><ul>{items}</ul>{more}")
    return "".join(parts)


def _drift_section(drift: dict | None) -> str:
    if not drift or not drift.get("baseline_spans"):
        return "<p>No earlier span passed the data gate: nothing to compare this span with.</p>"
    baseline = name_spans(drift["baseline_spans"])
    limits = drift["limits"]
    action = ("a span beyond a limit is refused" if limits["block"] else
              "a span beyond a limit is reported and trains (drift_blocks_training is off)")
    parts = [f"<p>This span's population (every split) and label prevalence against the training window's "
             f"({baseline}: the last spans that passed the data gate); "
             f"{action}.</p>"]
    rows = [f'<tr><td>{html.escape(name)}</td><td>{html.escape(entry["measure"])}</td>'
            f'{_cell(entry["value"], 3, "bad" if entry["value"] > entry["limit"] else "")}'
            f'{_cell(entry["limit"], 3)}</tr>' for name, entry in sorted(drift["features"].items())]
    parts.append(_table(["feature", "measure", "value", "limit"], rows))
    rows = [f'<tr><td>{label}</td>{_cell(entry["baseline"], 3)}{_cell(entry["span"], 3)}'
            f'{_cell(entry["change"], 3, "bad" if abs(entry["change"]) > entry["limit"] else "")}'
            f'{_cell(entry["limit"], 3)}</tr>' for label, entry in drift["prevalence"].items()]
    parts.append(_table(["label", f"prevalence in {baseline}", "in this span", "change", "limit"],
                        rows))
    return "".join(parts)


STYLE = """
body { font-family: sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 36px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.weakest, td.bad { background: #f8d0cc; font-weight: bold; }
tr.ensemble td { font-weight: bold; }
.verdict { font-size: 1.2em; font-weight: bold; padding: 6px 10px; display: inline-block; }
.verdict.good { background: #d4efd4; } .verdict.bad { background: #f8d0cc; }
img { max-width: 100%; display: block; margin: 8px 0; }
nav a { margin-right: 12px; }
"""


def render_page(record: RunRecord, pictures: dict[str, str], pipeline_root: str) -> str:
    """The page, with `pictures` (roc, pr, calibration, models, training, ood, study_roc, study_strips) as the names
    of the PNG files beside it (ood: None for a model without the score; the study pictures: None for a run
    without them)."""
    bodies = {
        "decision": _decision_section(record),
        "models": _models_section(record, pictures["models"]),
        "studies": _studies_section(record, pictures.get("study_strips")),
        "operating": _operating_section(record, pictures.get("study_roc")),
        "curves": f'<img src="{pictures["roc"]}" alt="ROC curves">'
                  f'<img src="{pictures["pr"]}" alt="precision-recall curves">',
        "calibration": f'<img src="{pictures["calibration"]}" alt="calibration plots">',
        "confusion": _confusion_section(record),
        "slices": _slices_section(record),
        "ood": _ood_section(record, pictures.get("ood")),
        "training": _training_section(record, pictures["training"]),
        "ingestion": _ingestion_section(record.ingestion),
        "drift": _drift_section(record.summary.get("drift")),
    }
    nav = "".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title in SECTIONS)
    sections = "".join(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{bodies[anchor]}</section>'
                       for anchor, title in SECTIONS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ICH pipeline run '
            f'{html.escape(record.run_id)}</title><style>{STYLE}</style></head><body>'
            f"<h1>ICH pipeline: review of run {html.escape(record.run_id)}</h1>"
            f"<p>Pipeline <code>{html.escape(record.pipeline_name)}</code> at <code>"
            f"{html.escape(os.path.abspath(pipeline_root))}</code>; evaluation <code>"
            f"{html.escape(record.summary['evaluation'])}</code>.</p><nav>{nav}</nav>{sections}</body></html>\n")
