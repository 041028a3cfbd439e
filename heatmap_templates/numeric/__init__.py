"""Numeric primitives below every stage: Pearson correlation (defined once), classification and localisation
metrics, exact-matrix resampling. Arrays in, arrays or numbers out; imports nothing of hmt but the errors.
"""
