"""Learned state: Pearson neighbourhoods, ALS, the LightGBM ranker and the generative models."""
