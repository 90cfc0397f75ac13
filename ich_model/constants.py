"""The project's domain constants: label order, CT windows, model input size.

Everything else imports these names; no other module spells out a label list or a window.
"""

from __future__ import annotations

from dataclasses import dataclass

# RSNA 2019 label order: the five subtypes, then `any` (their union). Model outputs, tf.Example labels and
# metrics all use this order.
SUBTYPES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
ANY = "any"
LABELS: tuple[str, ...] = (*SUBTYPES, ANY)
NUM_LABELS = len(LABELS)
# The abbreviations of the RSNA papers' tables, for column headings.
ABBREVIATIONS: dict[str, str] = {"epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH",
                                 "subarachnoid": "SAH", "subdural": "SDH", "any": "any"}


@dataclass(frozen=True)
class Window:
    """A CT display window: Hounsfield units in [level - width/2, level + width/2] map linearly to [0, 1]."""

    name: str
    level: float
    width: float

    @property
    def lower(self) -> float:
        return self.level - self.width / 2

    @property
    def upper(self) -> float:
        return self.level + self.width / 2


BLOOD_WINDOW = Window("blood", level=75.0, width=215.0)
BRAIN_WINDOW = Window("brain", level=40.0, width=80.0)
BONE_WINDOW = Window("bone", level=600.0, width=2800.0)
# Channel order of the model input: R = blood, G = brain, B = bone.
RGB_WINDOWS: tuple[Window, ...] = (BLOOD_WINDOW, BRAIN_WINDOW, BONE_WINDOW)

# Examples per training batch (the balanced sampler's window), for every member and preset.
BATCH_SIZE = 32

# Channels of the model input, one per window.
CHANNELS = len(RGB_WINDOWS)

# Side of the square model input, in pixels (not the Example feature `image_size`, the stored image's own size).
MODEL_INPUT_SIZE = 256
