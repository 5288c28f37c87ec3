"""Deterministic, model-free transforms: ids, matrices, ranking features, audio and image codecs."""
