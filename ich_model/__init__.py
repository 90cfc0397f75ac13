"""The ICH library: DICOM reading, windowing, preprocessing, the cascade model and synthetic data.

Nothing here imports TFX; the pipeline and components import this package, never the other way round.
"""
