"""Training speed of each preset and of the single-family networks of the tiny cascade's size, in one run.

    .venv/bin/python bench/train.py [--steps 5]

Each network trains with member A's optimizer and loss on fixed random 256x256 batches (the speed of a step does
not depend on the pixels); the first step (graph building) is not timed. Goal: `tiny` at 15 images/s or more
on 2 CPU cores. `b0` and `s` are GPU presets and run with small batches here. Then the tiny cascade under
float32, the GPU presets' mixed-precision policy (bfloat16 on this CPU) and float32 compiled with XLA: whether
either is a lever on a CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import results_path, write_results  # noqa: E402 - after the path is set

# name -> (Keras policy, XLA): the demo's float32, the GPU presets' policy as this CPU runs it, float32 with XLA.
PRECISION_VARIANTS = {"float32": ("float32", False), "mixed_bfloat16": ("mixed_bfloat16", False),
                      "float32 + XLA": ("float32", True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", type=Path, default=results_path("train"))
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from ich_model.constants import CHANNELS, MODEL_INPUT_SIZE, NUM_LABELS
    from ich_model.members import MEMBERS, compile_member
    from ich_model.model.network import build_network, model_flops
    from ich_model.model.presets import ABLATIONS, build_cascade

    networks = {  # name -> (builder, batch size, timed steps)
        "cascade tiny": (lambda: build_cascade("tiny", seed=1), 32, args.steps),
        "efficientnet-only (tiny size)": (lambda: build_network(ABLATIONS["efficientnet_only"], seed=1), 32,
                                          args.steps),
        "convnext-only (tiny size)": (lambda: build_network(ABLATIONS["convnext_only"], seed=1), 32, args.steps),
        "cascade b0": (lambda: build_cascade("b0", seed=1), 8, 2),
        "cascade s": (lambda: build_cascade("s", seed=1), 4, 2),
    }
    rng = np.random.default_rng(0)

    def train_rate(model, batch: int, steps: int) -> float:
        images = rng.random((batch, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS), dtype=np.float32)
        labels = (rng.random((batch, NUM_LABELS)) < 0.2).astype(np.float32)
        model.train_on_batch(images, labels)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, labels)
        return batch * steps / (time.perf_counter() - start)

    results = {"cpu_count": os.cpu_count(), "networks": {}, "tiny_precision": {}}
    for name, (build, batch, steps) in networks.items():
        tf.keras.backend.clear_session()
        model = compile_member(build(), MEMBERS["a"], total_steps=1000)
        rate = train_rate(model, batch, steps)
        results["networks"][name] = {"train_images_per_s": rate, "batch": batch, "parameters": model.count_params(),
                                     "gflops_256": model_flops(model) / 1e9}
        print(f"  {name:<32} {rate:7.1f} img/s  (batch {batch}, {model.count_params() / 1e6:5.2f} M parameters, "
              f"{model_flops(model) / 1e9:5.2f} GFLOPs)", flush=True)
    tiny = results["networks"]["cascade tiny"]["train_images_per_s"]
    results["tiny_vs_goal_15"] = tiny / 15.0
    print(f"tiny: {tiny:.1f} img/s = {tiny / 15:.2f}x the goal of 15 img/s")

    print("tiny cascade, batch 32, by precision:")
    for name, (policy, xla) in PRECISION_VARIANTS.items():
        tf.keras.backend.clear_session()
        tf.keras.mixed_precision.set_global_policy(policy)
        try:
            model = compile_member(build_cascade("tiny", seed=1), MEMBERS["a"], total_steps=1000)
            model.jit_compile = xla
            rate = train_rate(model, 32, args.steps)
        finally:
            tf.keras.mixed_precision.set_global_policy("float32")
        results["tiny_precision"][name] = {"train_images_per_s": rate}
        print(f"  {name:<32} {rate:7.1f} img/s", flush=True)
    baseline = results["tiny_precision"]["float32"]["train_images_per_s"]
    for name in PRECISION_VARIANTS:
        results["tiny_precision"][name]["vs_float32"] = results["tiny_precision"][name]["train_images_per_s"] / baseline
    write_results(args.json, results)


if __name__ == "__main__":
    main()
