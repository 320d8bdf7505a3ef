"""Plain helpers that every layer may use: atomic files, processes, one-line errors, the project's paths.

Standard library only, so that importing them never drags in NumPy,
Hydra or MLflow.
"""
