"""The exported SavedModel of a member or of the ensemble: one module type, any number of members.

Signatures:
  serving_default(examples: serialized raw tf.Examples) -> probabilities [B, 6] (member mean),
      spread [B, 6] (standard deviation between members), member_probabilities [B, M, 6], and each member's
      own probabilities as member_<name> [B, 6] (so that TFMA scores the ensemble and its members together);
  transform_features(examples) -> the tf.Transform outputs (for TFMA);
  and the function member_probabilities_from_images(image [B, 256, 256, 3]), which the Ensemble component
  calls on each member's SavedModel so that the raw Examples are parsed and transformed once, not per member.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from ich_model.constants import IMAGE_SIZE, NUM_LABELS
from ich_model.examples import LABEL
from ich_model.preprocessing import IMAGE

PROBABILITIES = "probabilities"
SPREAD = "spread"
MEMBER_PROBABILITIES = "member_probabilities"
SERVING_SIGNATURE = "serving_default"
TRANSFORM_SIGNATURE = "transform_features"

IMAGES_SPEC = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32, name="image")
EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name="examples")


def member_output(member_name: str) -> str:
    return f"member_{member_name}"


def ensemble_outputs(member_probabilities: tf.Tensor, member_names: list[str]) -> dict[str, tf.Tensor]:
    """[B, M, 6] member outputs -> the mean, the spread (population standard deviation) and the members."""
    return {
        PROBABILITIES: tf.reduce_mean(member_probabilities, axis=1),
        SPREAD: tf.math.reduce_std(member_probabilities, axis=1),
        MEMBER_PROBABILITIES: member_probabilities,
        **{member_output(name): member_probabilities[:, i] for i, name in enumerate(member_names)},
    }


class ScoringModule(tf.Module):
    """Scores raw tf.Examples with one or more members (Keras models or loaded member SavedModels)."""

    def __init__(self, members: list, member_names: list[str], transform_output_dir: str):
        super().__init__()
        if not members or len(members) != len(member_names):
            raise ValueError(f"a scoring module needs one name per member, got {len(members)} members and "
                             f"names {member_names}")
        self.__dict__["member_names"] = list(member_names)
        # Keras members are kept out of the object graph (saving Keras objects re-traces every layer, about
        # 30 s for the tiny preset); their variables are tracked instead, which is all the signatures capture.
        self.__dict__["members"] = members
        self.member_variables = [v for m in members if isinstance(m, tf.keras.Model) for v in m.variables]
        # Loaded members by name: a retraining run warm-starts each member from its namesake (member_weights).
        self.loaded_members = {name: m for name, m in zip(member_names, members, strict=True)
                               if not isinstance(m, tf.keras.Model)}
        transform_output = tft.TFTransformOutput(transform_output_dir)
        self.tft_layer = transform_output.transform_features_layer()
        # Parse as the transform graph was built (SchemaGen's shapes, e.g. [1] per scalar): serving Examples
        # carry no label; TFMA's labelled Examples do.
        raw_spec = transform_output.raw_feature_spec()
        label_spec = raw_spec.get(LABEL, tf.io.FixedLenFeature([NUM_LABELS], tf.int64))
        self.__dict__["serving_spec"] = {name: spec for name, spec in raw_spec.items() if name != LABEL}
        self.__dict__["transform_spec"] = {**self.serving_spec, LABEL: tf.io.FixedLenFeature(
            label_spec.shape, label_spec.dtype, default_value=[0] * NUM_LABELS)}

    def _member_stack(self, images: tf.Tensor) -> tf.Tensor:
        stacks = []
        for member in self.members:
            if isinstance(member, tf.keras.Model):
                stacks.append(member(images, training=False)[:, None, :])
            else:  # a loaded member SavedModel
                stacks.append(member.member_probabilities_from_images(images))
        return tf.concat(stacks, axis=1)

    @tf.function(input_signature=[IMAGES_SPEC])
    def member_probabilities_from_images(self, images):
        return self._member_stack(images)

    @tf.function(input_signature=[EXAMPLES_SPEC])
    def serve(self, examples):
        transformed = self.tft_layer(tf.io.parse_example(examples, self.serving_spec))
        return ensemble_outputs(self._member_stack(transformed[IMAGE]), self.member_names)

    @tf.function(input_signature=[EXAMPLES_SPEC])
    def transform_features(self, examples):
        return self.tft_layer(tf.io.parse_example(examples, self.transform_spec))

    def save(self, export_dir: str) -> None:
        tf.saved_model.save(self, export_dir, signatures={SERVING_SIGNATURE: self.serve,
                                                          TRANSFORM_SIGNATURE: self.transform_features})


def load_members(member_dirs: list[str]) -> list:
    return [tf.saved_model.load(path) for path in member_dirs]


def member_weights(ensemble_dir: str, member_name: str) -> list[tf.Variable]:
    """The variables of member `member_name` of an exported ensemble, in its Keras model's `variables` order
    (what a member's own export tracks), for warm-starting the same architecture."""
    ensemble = tf.saved_model.load(ensemble_dir)
    members = getattr(ensemble, "loaded_members", None)
    if not isinstance(members, dict) or member_name not in members:
        found = sorted(members) if isinstance(members, dict) else "none by name"
        raise ValueError(f"{ensemble_dir} is not an ensemble with a member {member_name!r} (members: {found})")
    return list(members[member_name].member_variables)
