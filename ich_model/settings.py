"""What one member's training is told: `TrainerSettings`, the one owner of its fields and defaults; and what the
study-context model's training is told: `ContextSettings`.

pipeline/training.py writes it into the Trainer's `custom_config` (`as_custom_config`) and derives the TFX
train and eval arguments from it; `run_fn` reads it back (`from_custom_config`), which refuses unknown keys.
Importing this module imports no TensorFlow (pipeline/configs.py and the `ich` command line read it); checking
the member and architecture names does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ich_model.constants import BATCH_SIZE
from ich_model.operating_points import SLICE_LEVEL, STUDY_LEVEL

PRECISIONS = ("float32", "mixed")


class _CustomConfig:
    """A Trainer's `custom_config` (a JSON object) to and from its settings dataclass; unknown keys are refused."""

    def as_custom_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_custom_config(cls, config: dict[str, Any] | None):
        config = dict(config or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown Trainer settings {unknown}; the settings are {', '.join(sorted(known))}")
        return cls(**config)


@dataclass(frozen=True)
class TrainerSettings(_CustomConfig):
    member: str = "a"  # the recipe: "a", "b" or "c" (ich_model/members.py)
    preset: str = "tiny"  # the cascade's size: "tiny", "b0" or "s" (ich_model/model/presets.py)
    architecture: str = "cascade"  # or the ablation's "efficientnet_only", "convnext_only" (tiny only)
    train_steps: int = 200
    eval_steps: int = 10  # at most; never more than the eval split holds
    batch_size: int = BATCH_SIZE
    eval_every_steps: int = 0  # 0: a fifth of the training steps
    cache_examples: bool = True  # keep the raw Examples in memory between epochs; false for sets beyond memory
    warm_start_steps: int = 0  # steps when starting from the latest blessed model; 0: train_steps
    seed: int | None = None  # the weights' initialisation and the sampler's order; None: the recipe's seed
    scanner_intensity: bool | None = None  # the intensity augmentation on or off; None: as the recipe says
    # "float32", or "mixed": bfloat16 where the device computes it (CPUs, GPUs of compute capability 8.0 and up),
    # float16 with loss scaling on older GPUs; the head and the loss stay float32 (ich_model/precision.py).
    precision: str = "float32"

    def __post_init__(self):
        from ich_model.members import MEMBERS
        from ich_model.model.presets import network_spec

        if self.member not in MEMBERS:
            raise ValueError(f"unknown member {self.member!r}; members are {', '.join(MEMBERS)}")
        network_spec(self.architecture, self.preset)  # raises for an unknown or unsized architecture
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; precisions are {', '.join(PRECISIONS)}")
        for name in ("train_steps", "eval_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def recipe(self):
        from ich_model.augment import with_scanner_intensity
        from ich_model.members import MEMBERS

        recipe = MEMBERS[self.member]
        if self.scanner_intensity is None:
            return recipe
        return dataclasses.replace(recipe, augmentation=with_scanner_intensity(recipe.augmentation,
                                                                               self.scanner_intensity))

    @property
    def initialisation_seed(self) -> int:
        return self.recipe.seed if self.seed is None else self.seed

    def evaluation_interval(self, steps: int) -> int:
        """Steps between evaluations in a training of `steps` steps."""
        return min(steps, self.eval_every_steps or max(1, steps // 5))

    @property
    def steps_from_base(self) -> int:
        """Steps of a training that starts from the base model's member."""
        return self.warm_start_steps or self.train_steps


@dataclass(frozen=True)
class ContextSettings(_CustomConfig):
    """The study-context Trainer's settings (ich_model/context_trainer.py); a batch is of series, not slices."""

    train_steps: int = 300
    batch_size: int = 16
    units: int = 64  # per GRU direction
    learning_rate: float = 1e-3
    seed: int = 0
    # The sensitivity each label's operating point reaches on the eval split, per slice and per study
    # (ich_model/operating_points.py): a triage user states what share of bleeds to find, not a probability.
    slice_sensitivity_target: float = 0.9
    study_sensitivity_target: float = 0.95

    def __post_init__(self):
        for name in ("train_steps", "batch_size", "units"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("slice_sensitivity_target", "study_sensitivity_target"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a share of positives in (0, 1], got {getattr(self, name)}")

    @property
    def sensitivity_targets(self) -> dict[str, float]:
        """The target per level, as ich_model.operating_points takes them."""
        return {SLICE_LEVEL: self.slice_sensitivity_target, STUDY_LEVEL: self.study_sensitivity_target}
