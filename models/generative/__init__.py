"""Generative models: VAE, RealNVP, GAN and neural style transfer."""
