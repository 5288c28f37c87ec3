"""Add-on jobs beside the recommender: generative models, style transfer, audio catalogues."""
