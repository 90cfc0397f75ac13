"""Custom TFX components, one package each (component.py, executor.py)."""
