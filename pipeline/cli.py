"""The `ich` command line.

Exit status: 0 done; 1 the run finished but its model was not blessed (`ich run --require-blessing`); 2 refused
before any work (bad usage, bad settings or input, a pipeline root another writer holds, nothing that could be
scored); 3 the run started and failed (the message names the component and the log); 4 the span's data broke the
schema and nothing was trained (the message names each anomaly).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings

NOT_BLESSED, REFUSED, RUN_FAILED, DATA_REFUSED = 1, 2, 3, 4
# TFMA divides by zero for precision and recall at thresholds that no example reaches (numpy warns, in every Beam
# worker); the summary reports undefined figures itself.
TFMA_DIVISIONS = ("tensorflow_model_analysis.metrics.confusion_matrix_metrics",
                  "tensorflow_model_analysis.metrics.binary_confusion_matrices")


def _ensure_legacy_keras() -> None:
    """tf.Transform and TFMA need Keras 2 (tf_keras), chosen by an environment variable that TensorFlow reads
    when it is first imported: start the process again with it set, before anything can import TensorFlow."""
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "pipeline.cli", *sys.argv[1:]])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _slices_per_study(text: str):
    from ich_model.synth import parse_slices_per_study

    try:
        return parse_slices_per_study(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _synth(args: argparse.Namespace) -> int:
    from ich_model.synth import generate_dataset

    summary = generate_dataset(args.out, patients=args.patients, slices_per_study=args.slices_per_study,
                               seed=args.seed, size=args.size, positive_fraction=args.positive_fraction,
                               subtype_mix=args.subtype_mix, workers=args.workers, shift=args.shift)
    print(f"wrote {summary.slices} slices of {summary.studies} studies ({summary.patients} patients) to "
          f"{summary.out_dir}")
    print("positive slices: " + ", ".join(f"{name} {count}" for name, count in
                                          sorted(summary.positive_slices.items())))
    print("storage: " + "; ".join(f"{name}: {n}" for name, n in summary.profiles.most_common()))
    print("image sizes: " + ", ".join(f"{shape}: {n}" for shape, n in summary.shapes.most_common()))
    return 0


def _config(args: argparse.Namespace):
    """The preset, then the named options, then every `--set NAME=VALUE`, in that order of precedence."""
    from pipeline.configs import preset, with_overrides

    overrides = {}
    for flag, name in (("data", "input_base"), ("input_base", "input_base"), ("pipeline_root", "pipeline_root"),
                       ("serving_dir", "serving_dir"), ("train_steps", "train_steps")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[name] = str(value)
    if getattr(args, "beam_arg", None):
        overrides["beam_pipeline_args"] = json.dumps(args.beam_arg)
    if getattr(args, "no_cache", False):
        overrides["enable_cache"] = "false"
    for item in args.set or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item}: expected NAME=VALUE")
        overrides[name.strip()] = value
    return with_overrides(preset(args.preset), overrides)


def _run(args: argparse.Namespace) -> int:
    from pipeline.local_runner import LAST_RUN, RunFailed, SpanRefused, run_local
    from pipeline.writer_lock import pipeline_root_lock

    config = _config(args)
    with pipeline_root_lock(config.pipeline_root, "ich run"):
        try:
            summary = run_local(config)
        except SpanRefused as error:
            print(f"ich run: the span was refused: {error}", file=sys.stderr, flush=True)
            return DATA_REFUSED
        except RunFailed as error:
            print(f"ich run: the run failed: {error}", file=sys.stderr, flush=True)
            return RUN_FAILED
    print(f"{LAST_RUN}: {os.path.join(config.pipeline_root, LAST_RUN)}")
    return 0 if summary["blessed"] or not args.require_blessing else NOT_BLESSED


def _watch(args: argparse.Namespace) -> int:
    from pipeline.watch import Watcher

    watcher = Watcher(_config(args), max_attempts=args.max_attempts,
                      retry_after=args.interval if args.retry_after is None else args.retry_after)
    try:
        failed = watcher.watch(interval=args.interval, once=args.once)
    except KeyboardInterrupt:
        if watcher.running is not None:
            print(f"\nstopped during the run of span {watcher.running}: it has no decision and runs again at the "
                  "next start", flush=True)
        else:
            print("\nstopped", flush=True)
        return 130
    return RUN_FAILED if failed else 0


def _predict(args: argparse.Namespace) -> int:
    from ich_model.constants import ANY, LABELS
    from ich_model.operating_points import STUDY_LEVEL
    from ich_model.predict import predict, refuse_overwrite, write_predictions
    from ich_model.serving_folder import newest_model_dir

    refuse_overwrite(args.out, args.format, args.overwrite)
    model_dir = newest_model_dir(args.model)
    print(f"scoring with {model_dir}", flush=True)
    predictions = predict(args.paths, model_dir, batch_size=args.batch_size, explain_dir=args.explain,
                          explain_threshold=args.explain_threshold)
    for skipped in predictions.skipped:
        print(f"skipped {skipped.path}: {skipped.reason} ({skipped.message})")
    slices = len(predictions.image_ids)
    if not slices:
        print(f"ich predict: error: nothing could be scored under {' '.join(args.paths)} "
              f"({len(predictions.skipped)} files skipped); nothing written", file=sys.stderr, flush=True)
        return REFUSED
    written = write_predictions(predictions, args.out, args.format)
    rate = slices / predictions.seconds if predictions.seconds else 0.0
    print(f"scored {slices} slices of {len(predictions.studies())} studies in {predictions.seconds:.1f} s "
          f"({rate:.1f} slices/s); skipped {len(predictions.skipped)} files; wrote {', '.join(map(str, written))}")
    any_index, flagged = LABELS.index(ANY), predictions.study_flags()
    threshold = predictions.operating_thresholds[STUDY_LEVEL][any_index]
    print(f"flagged for any hemorrhage: {sum(f[any_index] for f in flagged.values())} of {len(flagged)} studies at "
          + (f"the model's study operating point ({threshold:.4g})" if predictions.operating_points_chosen else
             f"the default threshold {threshold:g} (the model has no operating points)"))
    if args.explain:
        print(f"wrote {len(predictions.explained)} Grad-CAM pictures to {args.explain} (slices and subtypes with "
              f"probability >= {args.explain_threshold:g})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ich_model.dicom_node.service import Peer, Service, read_status
    from pipeline.writer_lock import lock_holder, pipeline_root_lock

    if args.status:
        status = read_status(args.spool, running=lock_holder(args.spool) is not None)
        print(json.dumps(status, indent=1))
        return 0
    if args.model is None:
        raise ValueError("--model is required (the serving folder that the Pusher publishes into)")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold {args.threshold}: a probability, 0 to 1")
    service = Service(args.model, args.spool, [Peer.parse(text) for text in args.allow or []],
                      ae_title=args.ae_title, port=args.port, bind=args.bind, study_timeout=args.study_timeout,
                      threshold=args.threshold,
                      forward=None if args.forward is None else Peer.parse(args.forward, with_port=True),
                      tls=(args.tls_cert, args.tls_key) if args.tls_cert else None)
    with pipeline_root_lock(args.spool, "ich serve", what="spool"):
        service.serve_forever()
    return 0


def _report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report

    index = write_report(args.pipeline_root, args.out, args.pipeline_name)
    print(f"wrote {index} (open it in a browser; its pictures are beside it)")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from pipeline.kubeflow_runner import cluster_config, compile_pipeline

    config = cluster_config(_config(args), pipeline_root=args.pipeline_root, input_base=args.data)
    if args.accelerators is not None:
        config = dataclasses.replace(config, trainer_accelerators=args.accelerators)
    if args.accelerator_type:
        config = dataclasses.replace(config, accelerator_type=args.accelerator_type)
    out = compile_pipeline(config, image=args.image, output=args.out)
    gpus = (f"{config.trainer_accelerators} x {config.accelerator_type} per trainer, global batch "
            f"{config.batch_size}" if config.trainer_accelerators else "no accelerators")
    print(f"wrote {out} (image {args.image}, pipeline root {config.pipeline_root}, input {config.input_base}, "
          f"{gpus})")
    return 0


def _add_config_options(command: argparse.ArgumentParser, default_preset: str) -> None:
    from pipeline.configs import PRESETS

    command.add_argument("--preset", default=default_preset, choices=sorted(PRESETS),
                         help=f"named settings (default {default_preset}); see pipeline/configs.py")
    command.add_argument("--train-steps", type=int, help="training steps per member")
    command.add_argument("--serving-dir", help="where blessed models are pushed (default <pipeline-root>/serving)")
    command.add_argument("--beam-arg", action="append", metavar="ARG",
                         help="a Beam pipeline argument, repeatable; replaces the preset's "
                              "(e.g. --beam-arg=--runner=DataflowRunner)")
    command.add_argument("--set", action="append", metavar="NAME=VALUE",
                         help="override any setting of pipeline/configs.py:PipelineConfig, repeatable "
                              "(e.g. --set max_weighted_log_loss=0.3 --set 'auc_floors={\"epidural\": 0.6}')")


def build_parser() -> argparse.ArgumentParser:
    from ich_model.synth import DEFAULT_POSITIVE_FRACTION
    from ich_model.synth.lesions import SUBTYPE_MIXES

    parser = argparse.ArgumentParser(prog="ich", description="Intracranial-hemorrhage detection pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser(
        "synth", help="write a synthetic head-CT set in the RSNA 2019 layout",
        description="Write DIR/stage_2_train/ID_<hex>.dcm and DIR/stage_2_train.csv: synthetic head CT with "
                    "labelled haemorrhage, laid out exactly as the RSNA 2019 training download.")
    synth.add_argument("--out", required=True, help="output folder (must not already hold a set)")
    synth.add_argument("--patients", type=int, required=True, help="number of patients")
    synth.add_argument("--slices-per-study", type=_slices_per_study, required=True,
                       help="axial slices in each study, or a range each study's length is drawn from (24-40)")
    synth.add_argument("--seed", type=int, required=True, help="random seed: same seed, same bytes")
    synth.add_argument("--size", type=int, default=512, help="rows and columns of most images (default 512)")
    synth.add_argument("--positive-fraction", type=float, default=DEFAULT_POSITIVE_FRACTION,
                       help=f"share of studies with a haemorrhage (default {DEFAULT_POSITIVE_FRACTION})")
    synth.add_argument("--subtype-mix", default="rsna", choices=sorted(SUBTYPE_MIXES),
                       help="how often each subtype occurs in bleeding studies: as in RSNA (default), or "
                            "balanced so that a small set holds every subtype")
    synth.add_argument("--shift", action="store_true",
                       help="write the shifted set: every nuisance parameter (anatomy, tissue densities, texture, "
                            "calibration, noise, kernel, artefacts, pose, calcifications, sinuses) drawn from outside "
                            "the training ranges, the blood as in training; see docs/synthetic-data.md")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    synth.set_defaults(handler=_synth)

    run = commands.add_parser(
        "run", help="run the whole pipeline here with LocalDagRunner",
        description="Run DicomExampleGen -> ... -> Evaluator -> Pusher with LocalDagRunner and a SQLite metadata "
                    "store under the pipeline root. With no data at --data, the synthetic demo set is generated "
                    "there first. Ends with a table of per-subtype AUCs and writes <pipeline-root>/last_run.json.")
    run.add_argument("--data", help="input base: the RSNA layout or span-N folders (default data/demo)")
    run.add_argument("--pipeline-root", help="artifacts, metadata and logs (default build/pipeline)")
    run.add_argument("--no-cache", action="store_true", help="re-execute every component")
    run.add_argument("--require-blessing", action="store_true", help="exit 1 when the model is not blessed")
    _add_config_options(run, "demo")
    run.set_defaults(handler=_run)

    from ich_model.predict import FORMATS

    predict = commands.add_parser(
        "predict", help="score DICOM slices with a pushed ensemble",
        description="Score DICOM files, folders or whole studies with an exported ensemble (its serving_default "
                    "on raw tf.Examples built by the ExampleGen's own reader). A file that is not a usable CT "
                    "slice is reported with its reason and skipped.")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders (any depth)")
    predict.add_argument("--model", required=True,
                         help="a pushed SavedModel, or a serving folder (then its newest version)")
    predict.add_argument("--out", default="predictions.csv", help="output file (default predictions.csv)")
    predict.add_argument("--format", default="rsna", choices=FORMATS,
                         help="rsna: Kaggle's submission rows (ID_<hex>_<subtype>,p); wide: one row per slice with "
                              "six probabilities, six spreads and, for a pipeline ensemble, ood_score and "
                              "out_of_distribution; json: all of it and ood_threshold. The CSV formats add "
                              "<out>_studies.csv (per study, each subtype's maximum over its slices, the median "
                              "ood_score and its flag).")
    predict.add_argument("--overwrite", action="store_true", help="replace output files that exist (never a DICOM "
                                                                   "file)")
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="slices per model call (default 32)")
    predict.add_argument("--explain", metavar="DIR",
                         help="write DIR/<image_id>_<subtype>.png: the brain window with a Grad-CAM heat map for "
                              "every slice and subtype called positive")
    predict.add_argument("--explain-threshold", type=float, default=0.5,
                         help="probability at which a subtype is called positive for --explain (default 0.5)")
    predict.set_defaults(handler=_predict)

    serve = commands.add_parser(
        "serve", help="a DICOM node: receive CT studies, triage each with the newest pushed model, send back an SR",
        description="A DICOM Storage SCP (CT Image Storage in every transfer syntax that ich predict reads, and "
                    "C-ECHO). Each instance is on disk in the spool before its C-STORE is answered. A study is "
                    "scored when its associations are closed and no instance came for --study-timeout seconds, "
                    "with the newest complete version in the serving folder; the result is a Comprehensive 3D SR "
                    "in <spool>/reports/, a line in <spool>/results.jsonl and, with --forward, the SR sent on. "
                    "Runs until stopped (Ctrl-C or SIGTERM); a restart scores what was spooled and not scored.")
    serve.add_argument("--spool", required=True, help="where instances, reports and results.jsonl are kept")
    serve.add_argument("--model", help="the serving folder of pushed versions (or one SavedModel)")
    serve.add_argument("--port", type=int, default=11112, help="TCP port (default 11112; 0 picks a free one)")
    serve.add_argument("--bind", default="0.0.0.0", help="address to listen on (default all)")
    serve.add_argument("--ae-title", default="ICH", help="this node's AE title (default ICH); senders must call it")
    serve.add_argument("--allow", action="append", metavar="AE@HOST",
                       help="a sender that may associate (repeatable; * for any AE title or any host); others are "
                            "rejected at association")
    serve.add_argument("--forward", metavar="AE@HOST:PORT", help="send each structured report there (C-STORE)")
    serve.add_argument("--study-timeout", type=float, default=30.0,
                       help="seconds without a new instance after which a study is complete (default 30)")
    serve.add_argument("--threshold", type=float,
                       help="operating threshold on the study's probability of any hemorrhage for the finding "
                            "'suspected intracranial hemorrhage' (default: the model's study operating point for "
                            "any, chosen on its eval split; 0.5 for a model without operating points)")
    serve.add_argument("--tls-cert", help="PEM certificate: associations over TLS only (with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--status", action="store_true",
                       help="print how many studies of --spool are waiting, scoring and done, then exit")
    serve.set_defaults(handler=_serve)

    watch = commands.add_parser(
        "watch", help="retrain when a new span folder of labelled scans is complete",
        description="Poll the input base for complete span-N folders (a label CSV and every image it lists, or a "
                    "_READY file) and run the pipeline once per new span, in span order: members warm-start "
                    "from the latest blessed model, and only a candidate that passes the gates against it is "
                    "pushed. Each decision is one line of <pipeline-root>/decisions.jsonl. A failed run is "
                    "retried at the next poll. One watcher per pipeline root.")
    watch.add_argument("--input-base", required=True, help="folder that receives the span-N folders")
    watch.add_argument("--pipeline-root", help="artifacts, metadata, logs and decisions (default build/pipeline)")
    watch.add_argument("--interval", type=float, default=60.0, help="seconds between polls (default 60)")
    watch.add_argument("--max-attempts", type=_positive_int, default=3,
                       help="failed runs of a span before it is recorded as failed and later spans go on (default 3)")
    watch.add_argument("--retry-after", type=float, metavar="SECONDS",
                       help="wait before the second attempt of a failed span, doubled for each later one (default: "
                            "the interval)")
    watch.add_argument("--once", action="store_true",
                       help="handle the complete spans that are pending, then exit (3 if a run failed)")
    _add_config_options(watch, "demo")
    watch.set_defaults(handler=_watch)

    from pipeline.configs import PIPELINE_NAME

    report = commands.add_parser(
        "report", help="write an HTML review of the latest run",
        description="Write a static HTML page (pictures beside it, nothing loaded from the network) about the latest "
                    "run under PIPELINE_ROOT: the blessing decision against the baseline, the ensemble against its "
                    "members, per-label ROC, precision-recall and calibration plots, confusion counts at the "
                    "operating threshold, the slice table, training curves and the ingestion report.")
    report.add_argument("pipeline_root", metavar="PIPELINE_ROOT", help="the pipeline root of `ich run` or `ich watch`")
    report.add_argument("--out", required=True, help="output folder (index.html and its pictures)")
    report.add_argument("--pipeline-name", default=PIPELINE_NAME, help=f"(default {PIPELINE_NAME})")
    report.set_defaults(handler=_report)

    compile_ = commands.add_parser(
        "compile", help="write the Kubeflow Pipelines v2 spec (pipeline.yaml)",
        description="Compile the pipeline with KubeflowV2DagRunner for a cluster: no network access and no "
                    "packaging; the image (built from the Dockerfile) holds this package.")
    from pipeline.configs import CONTAINER_IMAGE
    from pipeline.kubeflow_runner import DEFAULT_INPUT_BASE, DEFAULT_OUTPUT, DEFAULT_PIPELINE_ROOT

    compile_.add_argument("--image", default=CONTAINER_IMAGE, help=f"container image (default {CONTAINER_IMAGE})")
    compile_.add_argument("--pipeline-root", default=DEFAULT_PIPELINE_ROOT,
                          help=f"artifact root on the cluster (default {DEFAULT_PIPELINE_ROOT})")
    compile_.add_argument("--data", default=DEFAULT_INPUT_BASE,
                          help=f"input base with span-N folders (default {DEFAULT_INPUT_BASE})")
    compile_.add_argument("--out", default=DEFAULT_OUTPUT, help=f"output file (default {DEFAULT_OUTPUT})")
    compile_.add_argument("--accelerators", type=int, metavar="N",
                          help="accelerators per trainer (default: the preset's; cluster 4, 0 trains on CPU); the "
                               "Ensemble and the Evaluator get one when the trainers get any")
    compile_.add_argument("--accelerator-type", metavar="TYPE",
                          help="the accelerator's resource name or type (default nvidia.com/gpu; e.g. "
                               "NVIDIA_TESLA_A100 on Vertex AI)")
    _add_config_options(compile_, "cluster")
    compile_.set_defaults(handler=_compile)
    return parser


def _quiet_dependencies() -> None:
    """Keep the console for the pipeline's own output, in this process and in Beam's worker processes: no
    TensorFlow C++ log lines (errors reach Python as exceptions), no dependencies' Python-version FutureWarnings
    and no TFMA division warnings."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("PYTHONWARNINGS", ",".join(["ignore::FutureWarning", *(
        f"ignore::RuntimeWarning:{module}" for module in TFMA_DIVISIONS)]))
    warnings.filterwarnings("ignore", category=FutureWarning)
    for module in TFMA_DIVISIONS:
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=module)


def main(argv: list[str] | None = None) -> int:
    from pipeline.writer_lock import PipelineRootLocked, PipelineRootUnwritable

    if argv is None:
        _ensure_legacy_keras()
        _quiet_dependencies()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileExistsError, FileNotFoundError, LookupError, PipelineRootLocked,
            PipelineRootUnwritable) as error:
        parser.exit(REFUSED, f"ich {args.command}: error: {error}\n")
    except OSError as error:  # after the work began: a full disk, a file system gone read-only
        parser.exit(RUN_FAILED, f"ich {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
