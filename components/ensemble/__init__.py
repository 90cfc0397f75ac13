"""Ensemble: three member Model artifacts -> one Model artifact (mean probability and spread)."""

from components.ensemble.component import Ensemble

__all__ = ["Ensemble"]
