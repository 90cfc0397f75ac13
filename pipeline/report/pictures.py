"""The report's pictures (matplotlib, PNG files in the output folder), drawn from a RunRecord: ROC and
precision-recall curves, calibration, AUC per model, training curves, the eval split's out-of-distribution
scores, the ROC per study with the operating points, example studies slice by slice. Each function returns the
file's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.study_evaluator.executor import REFINED, SLICE_ONLY
from ich_model.constants import ABBREVIATIONS, LABELS
from ich_model.operating_points import STUDY_LEVEL
from ich_model.serving import PROBABILITIES
from pipeline.evaluation import MODEL_OUTPUTS
from pipeline.figures import (
    ENSEMBLE,
    MACRO_AUC,
    SLICE_MAX,
    STUDY_HEAD,
    class_key,
    level_slice,
    model_name,
    overall_slice,
)
from pipeline.report.data import CALIBRATION_BINS, RunRecord, calibration_bins, curve_points


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


def plot_study_roc(record: RunRecord, out_dir: Path) -> str | None:
    """study_roc.png: per label, the ROC over the eval studies of the study head and of the slice maximum, with the
    study model's study operating point marked (None for a run without study plots)."""
    studies = level_slice(record.study_plots, STUDY_LEVEL)
    if not studies:
        return None
    plt = _pyplot()
    points = record.summary.get("operating_points") or {}
    figure, axes = _label_grid(plt, "ROC per study (label: any slice positive); dot: the study operating point")
    for index, (label, ax) in enumerate(zip(LABELS, axes, strict=True)):
        for output, name, width in ((REFINED, STUDY_HEAD, 2.2), (SLICE_ONLY, SLICE_MAX, 0.9)):
            plot = studies.get(output, {}).get(class_key(index), {})
            if plot:
                curve = curve_points(plot)
                ax.plot(curve["fpr"], curve["recall"], linewidth=width, label=name)
        point = points.get(STUDY_LEVEL, {}).get(label)
        if point and point["sensitivity"] is not None and point["specificity"] is not None:
            ax.scatter([1 - point["specificity"]], [point["sensitivity"]], color="black", zorder=3, s=30)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set(title=label, xlabel="false-positive rate", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
    axes[0].legend(fontsize=8, loc="lower right")
    return _save(plt, figure, out_dir / "study_roc.png")


def plot_study_strips(record: RunRecord, out_dir: Path) -> str | None:
    """study_strips.png: for a few eval studies, the `any` probability of each slice along the slice normal, the
    study model's refined one against the slice ensemble's, over the slices labelled as bleeding; the study head's
    probability beside it (None for a run without example studies)."""
    studies = record.example_studies
    if not studies:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(len(studies), 1, figsize=(12, 2.2 * len(studies)), dpi=96, squeeze=False)
    figure.suptitle("Example eval studies: probability of any hemorrhage per slice along the slice normal")
    for number, (study, ax) in enumerate(zip(studies, axes[:, 0], strict=True), start=1):
        slices = np.arange(1, len(study.label) + 1)
        ax.bar(slices, study.label, width=1.0, color="tab:red", alpha=0.15, label="labelled as bleeding")
        ax.plot(slices, study.slice_only, color="tab:blue", linestyle="--", marker=".", label="slice ensemble")
        ax.plot(slices, study.refined, color="tab:orange", linewidth=2, marker="o", markersize=3,
                label="study model (refined)")
        ax.axhline(study.study, color="black", linestyle=":", linewidth=1, label="study head")
        kind = "bleeding" if study.positive else "no bleed"
        ax.set(title=f"study {number} ({kind}, {len(slices)} slices): study head {study.study:.3f}",
               xlim=(0.5, len(slices) + 0.5), ylim=(0, 1.02), ylabel="P(any)")
    axes[-1, 0].legend(fontsize=8, loc="upper right", ncol=4)  # the last study bleeds least: room for it
    axes[-1, 0].set_xlabel("slice along the normal")
    return _save(plt, figure, out_dir / "study_strips.png")


def plot_calibration(record: RunRecord, out_dir: Path) -> str:
    """calibration.png: per label, the ensemble's observed share positive against its mean prediction."""
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
    """models.png: AUC per label and macro AUC, a bar per model (the run summary's figures)."""
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


def plot_training(record: RunRecord, out_dir: Path) -> str:
    """training.png: per member, loss (train and validation) and validation macro AUC against steps."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    plt = _pyplot()
    figure, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(12, 4), dpi=96)
    for name, trainer in record.trainers.items():
        line = None
        for data, style, part in ((trainer.train, "-", "train"), (trainer.validation, "--", "validation")):
            points = data.get("epoch_loss", [])
            if points:
                steps, values = zip(*points, strict=True)
                kwargs = {"color": line.get_color()} if line is not None else {}
                (drawn,) = loss_ax.plot(steps, values, style, marker="o", markersize=3,
                                        label=f"member {name} {part}", **kwargs)
                line = line or drawn
        points = trainer.validation.get("epoch_macro_auc", [])
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
    return _save(plt, figure, out_dir / "training.png")


def ood_histogram(ood: dict):
    """The figure of an ensemble description's `ood` record: the histogram of the eval split's scores, the flag
    threshold as a line and the share of eval slices flagged written beside it."""
    plt = _pyplot()
    edges = np.asarray(ood["eval_histogram"]["edges"], dtype=float)
    counts = np.asarray(ood["eval_histogram"]["counts"], dtype=float)
    threshold = float(ood["threshold"])
    figure, ax = plt.subplots(figsize=(12, 4), dpi=96)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white",
           linewidth=0.5)
    ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1.5)
    # The text on the side of the line with more room, so that it stays inside the axes.
    left = threshold < (edges[0] + edges[-1]) / 2
    ax.text(threshold, 0.95, f"{'  ' if left else ''}flagged: {ood['flagged_share_eval']:.1%} of eval slices"
            f"{'' if left else '  '}", transform=ax.get_xaxis_transform(), ha="left" if left else "right",
            va="top", color="tab:red")
    ax.set(title="Out-of-distribution score of the eval split's slices (dashed: the flag threshold)",
           xlabel="out-of-distribution score (higher: further from the training slices)", ylabel="slices")
    return figure


def plot_ood_scores(record: RunRecord, out_dir: Path) -> str | None:
    """ood_scores.png: `ood_histogram` of the evaluated ensemble; None for a model without the score."""
    if record.ood is None:
        return None
    return _save(_pyplot(), ood_histogram(record.ood), out_dir / "ood_scores.png")


def plot_all(record: RunRecord, out_dir: Path) -> dict[str, str | None]:
    """Every picture of the page, by the name the page uses for it (None: the run has nothing to draw)."""
    roc, pr = plot_curves(record, out_dir)
    return {"roc": roc, "pr": pr, "calibration": plot_calibration(record, out_dir),
            "models": plot_models(record, out_dir), "training": plot_training(record, out_dir),
            "ood": plot_ood_scores(record, out_dir), "study_roc": plot_study_roc(record, out_dir),
            "study_strips": plot_study_strips(record, out_dir)}
