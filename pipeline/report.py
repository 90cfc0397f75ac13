"""`ich report`: a static HTML review of the latest pipeline run, for a reader who would rather look at pictures.

Everything comes from what the run stored: the metadata store (which executions made up the run, and their
artifacts), TFMA's results (`tfma.load_eval_result`: per-label metrics and plots, per slice, for the ensemble and
each member), the Trainers' TensorBoard logs and the ExampleGen's ingestion report. The page is one `index.html`
with its pictures as PNG files beside it; it loads nothing from the network.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.dicom_example_gen.executor import REPORT_FILE
from ich_model.constants import ABBREVIATIONS, LABELS
from ich_model.members import CHECKPOINT_METRIC, CHECKPOINT_METRIC_SE, MEMBERS, kept_evaluation
from ich_model.metrics import WEIGHTED_LOG_LOSS
from ich_model.serving import PROBABILITIES
from pipeline.configs import metadata_path
from pipeline.evaluation import MODEL_OUTPUTS
from pipeline.figures import (
    ENSEMBLE,
    MACRO_AUC,
    class_key,
    metric_value,
    model_figures,
    model_name,
    overall_slice,
    undefined_note,
)
from pipeline.summary import (
    EXAMPLE_GEN,
    execution_artifacts,
    latest_evaluation,
    latest_execution,
    open_store,
    output_artifact,
)
from pipeline.training import trainer_id

INDEX = "index.html"
BASELINE = "baseline"  # TFX's name for the baseline model in an evaluation with one
# Sections of the page, in order: (anchor, heading). Tests check that each is present.
SECTIONS = (
    ("decision", "Blessing decision"),
    ("models", "Ensemble against its members"),
    ("curves", "ROC and precision-recall curves"),
    ("calibration", "Calibration"),
    ("confusion", "Confusion counts at the operating threshold"),
    ("slices", "Slices"),
    ("training", "Training curves"),
    ("ingestion", "Ingestion"),
)
CALIBRATION_BINS = 10


@dataclass
class RunRecord:
    """What the latest run stored, gathered from the metadata store."""

    pipeline_name: str
    run_id: str
    summary: dict  # pipeline.summary.run_summary; its "metrics" are pipeline.figures.evaluation_figures
    metrics: list  # TFMA slicing metrics of the evaluated model: [(slice key, {output: {sub key: metrics}})]
    plots: list  # TFMA plots of the evaluated model, same shape
    baseline_metrics: dict | None  # overall slice of the baseline, or None without one
    trainers: dict[str, dict]  # member -> {"warm_start": base model uri or None, "logs": log dir}
    ingestion: dict  # the ExampleGen's ingestion report
    threshold: float | None


def collect(pipeline_root: str, pipeline_name: str) -> RunRecord:
    """Read the latest run (the newest Evaluator execution's run) from the pipeline root."""
    import tensorflow_model_analysis as tfma

    store = open_store(metadata_path(pipeline_root))
    summary, result, run = latest_evaluation(store, pipeline_name)
    run_id = next(c.name for c in store.get_contexts_by_id([run]))
    baseline_metrics = None
    if summary["baseline"]:
        baseline = tfma.load_eval_result(summary["evaluation"], model_name=BASELINE)
        baseline_metrics = overall_slice(baseline.slicing_metrics)
    trainers = {}
    for name in MEMBERS:
        inputs, outputs = execution_artifacts(store, latest_execution(store, pipeline_name, trainer_id(name), run))
        base = inputs.get("base_model", [])
        trainers[name] = {"warm_start": base[0].uri if base else None,
                          "logs": os.path.join(outputs["model_run"][0].uri, "logs")}
    examples = output_artifact(store, pipeline_name, EXAMPLE_GEN, "examples", run)
    with open(os.path.join(examples.uri, REPORT_FILE)) as f:
        ingestion = json.load(f)
    return RunRecord(pipeline_name, run_id, summary, result.slicing_metrics, result.plots, baseline_metrics,
                     trainers, ingestion, _operating_threshold(result.config))


def _operating_threshold(eval_config) -> float | None:
    """The threshold of the Evaluator's confusion counts, from the EvalConfig stored with the results."""
    for spec in eval_config.metrics_specs:
        for metric in spec.metrics:
            if metric.class_name == "TruePositives" and metric.config:
                thresholds = json.loads(metric.config).get("thresholds") or [None]
                return thresholds[0]
    return None


def scalar_series(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a TensorBoard event folder: tag -> [(step, value)], in step order."""
    import tensorflow as tf

    series: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tf.make_ndarray(value.tensor))
                elif value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    continue
                series.setdefault(value.tag, []).append((int(event.step), number))
    return {tag: sorted(points) for tag, points in series.items()}


def curve_points(plot: dict) -> dict[str, np.ndarray]:
    """TFMA's ConfusionMatrixPlot -> false-positive rate, recall and precision per threshold."""
    matrices = plot.get("confusionMatrixAtThresholds", {}).get("matrices", [])
    counts = {key: np.array([float(m.get(key, 0.0)) for m in matrices]) for key in (
        "truePositives", "falsePositives", "trueNegatives", "falseNegatives")}
    tp, fp, tn, fn = (counts[k] for k in ("truePositives", "falsePositives", "trueNegatives", "falseNegatives"))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"fpr": np.nan_to_num(fp / (fp + tn)), "recall": np.nan_to_num(tp / (tp + fn)),
                "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 1.0)}


def calibration_bins(plot: dict, bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TFMA's CalibrationPlot buckets regrouped into `bins` equal-width bins of predicted probability: the mean
    prediction, the observed positive share and the example count per non-empty bin."""
    buckets = plot.get("calibrationHistogramBuckets", {}).get("buckets", [])
    count, label, prediction = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for bucket in buckets:
        n = float(bucket.get("numWeightedExamples", 0.0))
        if not n:
            continue
        lower = float(bucket.get("lowerThresholdInclusive", 0.0))
        index = int(np.clip(np.floor(max(lower, 0.0) * bins), 0, bins - 1))
        count[index] += n
        label[index] += float(bucket.get("totalWeightedLabel", 0.0))
        prediction[index] += float(bucket.get("totalWeightedRefinedPrediction", 0.0))
    kept = count > 0
    return prediction[kept] / count[kept], label[kept] / count[kept], count[kept]


# ---- pictures ---------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _label_grid(plt, title: str):
    figure, axes = plt.subplots(2, 3, figsize=(12, 7.5), dpi=96)
    figure.suptitle(title)
    return figure, axes.ravel()


def _save(plt, figure, out: Path) -> str:
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return out.name


def plot_curves(record: RunRecord, out_dir: Path) -> tuple[str, str]:
    """roc.png and pr.png: per label, the ensemble (thick) and each member (thin), overall slice."""
    plt = _pyplot()
    overall = overall_slice(record.plots)
    names = []
    for kind, x_key, y_key, x_label, y_label in (("roc", "fpr", "recall", "false-positive rate", "sensitivity"),
                                                 ("pr", "recall", "precision", "recall", "precision")):
        figure, axes = _label_grid(plt, "ROC curves" if kind == "roc" else "Precision-recall curves")
        for index, (label, ax) in enumerate(zip(LABELS, axes, strict=True)):
            for output in MODEL_OUTPUTS:
                plot = overall.get(output, {}).get(class_key(index), {})
                if not plot:
                    continue
                points = curve_points(plot)
                ensemble = output == PROBABILITIES
                ax.plot(points[x_key], points[y_key], linewidth=2.2 if ensemble else 0.9,
                        alpha=1.0 if ensemble else 0.7, label=model_name(output))
            if kind == "roc":
                ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
            ax.set(title=label, xlabel=x_label, ylabel=y_label, xlim=(0, 1), ylim=(0, 1.02))
        axes[0].legend(fontsize=8, loc="lower right" if kind == "roc" else "lower left")
        names.append(_save(plt, figure, out_dir / f"{kind}.png"))
    return names[0], names[1]


def plot_calibration(record: RunRecord, out_dir: Path) -> str:
    plt = _pyplot()
    overall = overall_slice(record.plots).get(PROBABILITIES, {})
    figure, axes = _label_grid(plt, f"Calibration of the ensemble ({CALIBRATION_BINS} bins of predicted "
                                    "probability; marker area = slices)")
    for index, (label, ax) in enumerate(zip(LABELS, axes, strict=True)):
        predicted, observed, count = calibration_bins(overall.get(class_key(index), {}))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        if len(count):
            ax.plot(predicted, observed, color="tab:blue", linewidth=1)
            ax.scatter(predicted, observed, s=12 + 200 * count / count.max(), color="tab:blue", zorder=3)
        ax.set(title=label, xlabel="mean predicted probability", ylabel="observed share positive", xlim=(0, 1),
               ylim=(0, 1.02))
    return _save(plt, figure, out_dir / "calibration.png")


def plot_models(record: RunRecord, out_dir: Path) -> str:
    plt = _pyplot()
    metrics = record.summary["metrics"]
    models = list(metrics)
    columns = [*LABELS, MACRO_AUC]
    figure, ax = plt.subplots(figsize=(12, 4), dpi=96)
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [metrics[model].get(c) for c in columns]
        ax.bar(np.arange(len(columns)) + i * width, [np.nan if v is None else v for v in values], width,
               label=model, edgecolor="black" if model == ENSEMBLE else None)
    ax.set_xticks(np.arange(len(columns)) + width * (len(models) - 1) / 2,
                  [ABBREVIATIONS.get(c, "macro") for c in columns])
    ax.set(ylabel="AUC (overall slice)", ylim=(0, 1.05), title="AUC per label: ensemble and members")
    ax.legend(fontsize=8, ncols=len(models))
    return _save(plt, figure, out_dir / "models.png")


def plot_training(record: RunRecord, out_dir: Path) -> tuple[str, dict[str, dict]]:
    """training.png: per member, loss (train and validation) and validation macro AUC against steps."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    plt = _pyplot()
    figure, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(12, 4), dpi=96)
    series = {}
    for name, trainer in record.trainers.items():
        train = scalar_series(os.path.join(trainer["logs"], "train"))
        validation = scalar_series(os.path.join(trainer["logs"], "validation"))
        series[name] = {"train": train, "validation": validation}
        line = None
        for data, style, part in ((train, "-", "train"), (validation, "--", "validation")):
            points = data.get("epoch_loss", [])
            if points:
                steps, values = zip(*points, strict=True)
                kwargs = {"color": line.get_color()} if line is not None else {}
                (drawn,) = loss_ax.plot(steps, values, style, marker="o", markersize=3,
                                        label=f"member {name} {part}", **kwargs)
                line = line or drawn
        points = validation.get("epoch_macro_auc", [])
        if points:
            steps, values = zip(*points, strict=True)
            auc_ax.plot(steps, values, marker="o", markersize=3, label=f"member {name}",
                        **({"color": line.get_color()} if line is not None else {}))
    loss_ax.set(title="loss", xlabel="evaluation (one per interval of training steps)", ylabel="loss")
    auc_ax.set(title="validation macro AUC", xlabel="evaluation (one per interval of training steps)", ylabel="AUC",
               ylim=(0, 1.02))
    for ax in (loss_ax, auc_ax):
        steps = sorted({x for line in ax.lines for x in line.get_xdata()})
        if steps:  # whole epochs only, with room around a single one
            ax.set_xlim(steps[0] - 0.5, steps[-1] + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1) if len(steps) > 10
                                       else FixedLocator(steps))
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(plt, figure, out_dir / "training.png"), series


# ---- page -------------------------------------------------------------------------------------------------


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
    now = model_figures(overall_slice(record.metrics).get(PROBABILITIES, {}))
    before = model_figures(record.baseline_metrics.get(PROBABILITIES, {})) if record.baseline_metrics else {}
    rows = []
    for name, title, higher_is_better in ([(label, f"AUC {label}", True) for label in LABELS]
                                          + [(WEIGHTED_LOG_LOSS, "weighted log loss", False)]):
        change = None if now[name] is None or before.get(name) is None else now[name] - before[name]
        worse = change is not None and (change < 0 if higher_is_better else change > 0)
        rows.append(f"<tr><td>{title}</td>{_cell(before.get(name))}{_cell(now[name])}"
                    f"{_cell(change, css='bad' if worse else '')}</tr>")
    parts.append(_table(["metric (ensemble, overall)", "baseline", "candidate", "change"], rows))
    parts.append("<p>n/a: the evaluated slices hold no positive (or no negative) of that label, so its AUC is "
                 "undefined; TFMA reports 0 for it, which is what the gate compares.</p>")
    return "".join(parts)


def _models_section(record: RunRecord, image: str) -> str:
    metrics = record.summary["metrics"]
    columns = [*LABELS, MACRO_AUC, WEIGHTED_LOG_LOSS]
    best_member = max((m for m in metrics if m != ENSEMBLE),
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
    headers = ["model", *(ABBREVIATIONS[label] + " AUC" for label in LABELS), "macro AUC", "wLogLoss"]
    return note + _table(headers, rows) + f'<img src="{image}" alt="AUC per label, ensemble and members">'


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


def _slices_section(record: RunRecord) -> str:
    slices = sorted(record.metrics, key=lambda item: (len(item[0]) > 0, str(item[0])))
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


def _training_section(record: RunRecord, image: str, series: dict) -> str:
    rows = []
    for name, trainer in record.trainers.items():
        losses = series[name]["validation"].get(f"epoch_{CHECKPOINT_METRIC}", [])
        errors = dict(series[name]["validation"].get(f"epoch_{CHECKPOINT_METRIC_SE}", []))
        aucs = dict(series[name]["validation"].get("epoch_macro_auc", []))
        kept = kept_evaluation([loss for _, loss in losses], [errors.get(step, np.nan) for step, _ in losses])
        kept_step, kept_loss = (None, None) if kept is None else losses[kept]  # as the Trainer keeps
        start = f"warm start from <code>{html.escape(trainer['warm_start'])}</code>" if trainer["warm_start"] \
            else "from scratch"
        rows.append(f"<tr><td>member {name}</td><td>{start}</td><td class=\"num\">{len(losses)}</td>"
                    f"{_cell(kept_loss)}{_cell(aucs.get(kept_step))}</tr>")
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


def write_report(pipeline_root: str, out_dir: str | os.PathLike, pipeline_name: str) -> Path:
    """Write `out_dir/index.html` and its pictures for the latest run under `pipeline_root`."""
    record = collect(pipeline_root, pipeline_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    roc, pr = plot_curves(record, out)
    training_image, series = plot_training(record, out)
    bodies = {
        "decision": _decision_section(record),
        "models": _models_section(record, plot_models(record, out)),
        "curves": f'<img src="{roc}" alt="ROC curves"><img src="{pr}" alt="precision-recall curves">',
        "calibration": f'<img src="{plot_calibration(record, out)}" alt="calibration plots">',
        "confusion": _confusion_section(record),
        "slices": _slices_section(record),
        "training": _training_section(record, training_image, series),
        "ingestion": _ingestion_section(record.ingestion),
    }
    nav = "".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title in SECTIONS)
    sections = "".join(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{bodies[anchor]}</section>'
                       for anchor, title in SECTIONS)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ICH pipeline run '
            f'{html.escape(record.run_id)}</title><style>{STYLE}</style></head><body>'
            f"<h1>ICH pipeline: review of run {html.escape(record.run_id)}</h1>"
            f"<p>Pipeline <code>{html.escape(record.pipeline_name)}</code> at <code>"
            f"{html.escape(os.path.abspath(pipeline_root))}</code>; evaluation <code>"
            f"{html.escape(record.summary['evaluation'])}</code>.</p><nav>{nav}</nav>{sections}</body></html>\n")
    index = out / INDEX
    index.write_text(page)
    return index

