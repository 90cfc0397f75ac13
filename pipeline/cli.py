"""The `ich` command line."""

from __future__ import annotations

import argparse
import os
import sys


def _ensure_legacy_keras() -> None:
    """tf.Transform and TFMA need Keras 2 (tf_keras), chosen by an environment variable that TensorFlow reads
    when it is first imported: start the process again with it set, before anything can import TensorFlow."""
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "pipeline.cli", *sys.argv[1:]])


def _synth(args: argparse.Namespace) -> int:
    from ich_model.synth import generate_dataset

    summary = generate_dataset(args.out, patients=args.patients, slices_per_study=args.slices_per_study,
                               seed=args.seed, size=args.size, positive_fraction=args.positive_fraction,
                               workers=args.workers)
    print(f"wrote {summary.slices} slices of {summary.studies} studies ({summary.patients} patients) to "
          f"{summary.out_dir}")
    print("positive slices: " + ", ".join(f"{name} {count}" for name, count in
                                          sorted(summary.positive_slices.items())))
    print("storage: " + "; ".join(f"{name}: {n}" for name, n in summary.profiles.most_common()))
    print("image sizes: " + ", ".join(f"{shape}: {n}" for shape, n in summary.shapes.most_common()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ich_model.synth import DEFAULT_POSITIVE_FRACTION

    parser = argparse.ArgumentParser(prog="ich", description="Intracranial-hemorrhage detection pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser(
        "synth", help="write a synthetic head-CT set in the RSNA 2019 layout",
        description="Write DIR/stage_2_train/ID_<hex>.dcm and DIR/stage_2_train.csv: synthetic head CT with "
                    "labelled haemorrhage, laid out exactly as the RSNA 2019 training download.")
    synth.add_argument("--out", required=True, help="output folder (must not already hold a set)")
    synth.add_argument("--patients", type=int, required=True, help="number of patients")
    synth.add_argument("--slices-per-study", type=int, required=True, help="axial slices in each study")
    synth.add_argument("--seed", type=int, required=True, help="random seed: same seed, same bytes")
    synth.add_argument("--size", type=int, default=512, help="rows and columns of most images (default 512)")
    synth.add_argument("--positive-fraction", type=float, default=DEFAULT_POSITIVE_FRACTION,
                       help=f"share of studies with a haemorrhage (default {DEFAULT_POSITIVE_FRACTION})")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    synth.set_defaults(handler=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _ensure_legacy_keras()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileExistsError) as error:
        parser.exit(2, f"ich {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
