"""The exported SavedModel of a member or of the ensemble: one module type, any number of members.

Signatures:
  serving_default(examples: serialized raw tf.Examples) -> probabilities [B, 6] (member mean),
      spread [B, 6] (standard deviation between members), member_probabilities [B, M, 6], embedding [B, M, D]
      (each member's pooled features, which the head classifies), and each member's own probabilities as
      member_<name> [B, 6] (so that TFMA scores the ensemble and its members together); an ensemble exported
      with an OOD model (ich_model/ood.py, fitted by the Ensemble component) adds ood_score [B] (mean over
      members of the minimum over classes of the squared Mahalanobis distance of the embedding) and
      out_of_distribution [B] (1.0 where ood_score is above the model's threshold, else 0.0); member exports
      have neither;
  transform_features(examples) -> the tf.Transform outputs (for TFMA);
  and the function member_outputs_from_images(image [B, 256, 256, 3]) -> {probabilities, embedding}, which the
  ensemble calls on each member's SavedModel so that the raw Examples are parsed and transformed once, not per
  member.
Beside the weights, `assets/model_description.json` says what the model is (ich_model/description.py).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from ich_model.constants import CHANNELS, MODEL_INPUT_SIZE, NUM_LABELS
from ich_model.description import member_output, write_description
from ich_model.examples import LABEL
from ich_model.model.network import EMBEDDING_LAYER, tap_layer
from ich_model.preprocessing import IMAGE

PROBABILITIES = "probabilities"
SPREAD = "spread"
MEMBER_PROBABILITIES = "member_probabilities"
EMBEDDING = "embedding"
OOD_SCORE = "ood_score"
OUT_OF_DISTRIBUTION = "out_of_distribution"
SERVING_SIGNATURE = "serving_default"
TRANSFORM_SIGNATURE = "transform_features"

IMAGES_SPEC = tf.TensorSpec([None, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS], tf.float32, name="image")
EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name="examples")


def ensemble_outputs(member_probabilities: tf.Tensor, embedding: tf.Tensor,
                     member_names: list[str]) -> dict[str, tf.Tensor]:
    """[B, M, 6] member outputs and [B, M, D] embeddings -> the mean, the spread (population standard deviation),
    the members and their embeddings."""
    return {
        PROBABILITIES: tf.reduce_mean(member_probabilities, axis=1),
        SPREAD: tf.math.reduce_std(member_probabilities, axis=1),
        MEMBER_PROBABILITIES: member_probabilities,
        EMBEDDING: embedding,
        **{member_output(name): member_probabilities[:, i] for i, name in enumerate(member_names)},
    }


def ood_outputs(embedding: tf.Tensor, means: tf.Tensor, precision: tf.Tensor,
                threshold: tf.Tensor) -> dict[str, tf.Tensor]:
    """[B, M, D] embeddings -> the OOD score and flag of ich_model.ood (means [M, C, D], precision [M, D, D]),
    in float64 as numpy fitted them: a squared distance over D dims loses digits in float32."""
    difference = tf.cast(embedding, tf.float64)[:, :, None, :] - means[None]
    distances = tf.einsum("bmcd,mde,bmce->bmc", difference, precision, difference)
    score = tf.reduce_mean(tf.reduce_min(distances, axis=2), axis=1)
    return {OOD_SCORE: tf.cast(score, tf.float32), OUT_OF_DISTRIBUTION: tf.cast(score > threshold, tf.float32)}


def ood_threshold(loaded) -> float | None:
    """The OOD flag threshold of a loaded export (None: it has no OOD model, e.g. a member export)."""
    threshold = getattr(loaded, "ood_threshold", None)
    return None if threshold is None else float(threshold.numpy())


def _with_embedding(model: tf.keras.Model) -> tf.keras.Model:
    """The same network (shared weights) returning its pooled features beside its probabilities."""
    return tf.keras.Model(model.input, [model.output, tap_layer(model, EMBEDDING_LAYER).output])


class ScoringModule(tf.Module):
    """Scores raw tf.Examples with one Keras member (a Trainer's export) or several loaded member SavedModels
    (the ensemble); `description` (ich_model/description.py) is written beside the weights. With `ood` (an
    ich_model.ood.OodModel, calibrated, one Gaussian set per member) its constants are saved as variables and
    `serving_default` adds the OOD score and flag."""

    def __init__(self, members: list, member_names: list[str], transform_output_dir: str, description: dict,
                 ood=None):
        super().__init__()
        if not members or len(members) != len(member_names):
            raise ValueError(f"a scoring module needs one name per member, got {len(members)} members and "
                             f"names {member_names}")
        if len(members) > 1 and any(isinstance(m, tf.keras.Model) for m in members):
            raise ValueError("an ensemble stacks member exports (loaded SavedModels), each with its own weights and "
                             "description; export a Keras member on its own first")
        if description["member_order"] != list(member_names):
            raise ValueError(f"the description's members {description['member_order']} are not the module's "
                             f"{list(member_names)}")
        if (ood is None) != ("ood" not in description):
            raise ValueError("an OOD model and the description's `ood` entry come together (ensemble_description)")
        if ood is not None and (ood.threshold is None or ood.means.shape[0] != len(members)):
            raise ValueError(f"the OOD model must be calibrated and hold one Gaussian set per member "
                             f"({len(members)}), got threshold {ood.threshold} and means {ood.means.shape}")
        self.__dict__["member_names"] = list(member_names)
        self.__dict__["description"] = description
        # Keras members are kept out of the object graph (saving Keras objects re-traces every layer, about
        # 30 s for the tiny preset); their variables are tracked instead, which is all the signatures capture.
        self.__dict__["members"] = [_with_embedding(m) if isinstance(m, tf.keras.Model) else m for m in members]
        self.member_variables = [v for m in members if isinstance(m, tf.keras.Model) for v in m.variables]
        # Loaded members by name: rebuilding a member (Grad-CAM, warm start) reads its variables here.
        self.loaded_members = {name: m for name, m in zip(member_names, members, strict=True)
                               if not isinstance(m, tf.keras.Model)}
        self.__dict__["has_ood"] = ood is not None
        if ood is not None:  # variables, so that the export holds them and a reader sees the threshold
            self.ood_means = tf.Variable(ood.means, trainable=False, dtype=tf.float64, name="ood_means")
            self.ood_precision = tf.Variable(ood.precision, trainable=False, dtype=tf.float64, name="ood_precision")
            self.ood_threshold = tf.Variable(ood.threshold, trainable=False, dtype=tf.float64, name="ood_threshold")
        transform_output = tft.TFTransformOutput(transform_output_dir)
        self.tft_layer = transform_output.transform_features_layer()
        # Parse as the transform graph was built (SchemaGen's shapes, e.g. [1] per scalar): serving Examples
        # carry no label; TFMA's labelled Examples do.
        raw_spec = transform_output.raw_feature_spec()
        label_spec = raw_spec.get(LABEL, tf.io.FixedLenFeature([NUM_LABELS], tf.int64))
        self.__dict__["serving_spec"] = {name: spec for name, spec in raw_spec.items() if name != LABEL}
        self.__dict__["transform_spec"] = {**self.serving_spec, LABEL: tf.io.FixedLenFeature(
            label_spec.shape, label_spec.dtype, default_value=[0] * NUM_LABELS)}

    def _member_stack(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        probabilities, embeddings = [], []
        for member in self.members:
            if isinstance(member, tf.keras.Model):
                member_probabilities, embedding = member(images, training=False)
                probabilities.append(member_probabilities[:, None, :])
                embeddings.append(embedding[:, None, :])
            else:  # a loaded member SavedModel
                outputs = member.member_outputs_from_images(images)
                probabilities.append(outputs[PROBABILITIES])
                embeddings.append(outputs[EMBEDDING])
        return tf.concat(probabilities, axis=1), tf.concat(embeddings, axis=1)

    @tf.function(input_signature=[IMAGES_SPEC])
    def member_outputs_from_images(self, images):
        probabilities, embedding = self._member_stack(images)
        return {PROBABILITIES: probabilities, EMBEDDING: embedding}

    @tf.function(input_signature=[EXAMPLES_SPEC])
    def serve(self, examples):
        transformed = self.tft_layer(tf.io.parse_example(examples, self.serving_spec))
        outputs = ensemble_outputs(*self._member_stack(transformed[IMAGE]), self.member_names)
        if self.has_ood:
            outputs.update(ood_outputs(outputs[EMBEDDING], self.ood_means, self.ood_precision, self.ood_threshold))
        return outputs

    @tf.function(input_signature=[EXAMPLES_SPEC])
    def transform_features(self, examples):
        return self.tft_layer(tf.io.parse_example(examples, self.transform_spec))

    def save(self, export_dir: str) -> None:
        tf.saved_model.save(self, export_dir, signatures={SERVING_SIGNATURE: self.serve,
                                                          TRANSFORM_SIGNATURE: self.transform_features})
        write_description(export_dir, self.description)


def load_members(member_dirs: list[str]) -> list:
    return [tf.saved_model.load(path) for path in member_dirs]
