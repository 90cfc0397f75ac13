"""DicomExampleGen: DICOM slices + RSNA label CSVs -> tf.Examples split by patient."""

from components.dicom_example_gen.component import DicomExampleGen

__all__ = ["DicomExampleGen"]
