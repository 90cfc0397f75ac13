"""`ich report`: a static HTML review of the latest pipeline run, for a reader who would rather look at pictures.

Everything comes from what the run stored: the metadata store (which executions made up the run, and their
artifacts), TFMA's results (`tfma.load_eval_result`: per-label metrics and plots, per slice, for the ensemble and
each member), the Trainers' TensorBoard logs and the ExampleGen's ingestion report. The page is one `index.html`
with its pictures as PNG files beside it; it loads nothing from the network.

`data` reads the run into plain data (a RunRecord), `pictures` draws the PNG files from it and `page` writes the
HTML; `write_report` runs the three.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.report.data import collect
from pipeline.report.page import render_page
from pipeline.report.pictures import plot_all

INDEX = "index.html"


def write_report(pipeline_root: str, out_dir: str | os.PathLike, pipeline_name: str) -> Path:
    """Write `out_dir/index.html` and its pictures for the latest run under `pipeline_root`."""
    record = collect(pipeline_root, pipeline_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = out / INDEX
    index.write_text(render_page(record, plot_all(record, out), pipeline_root))
    return index
