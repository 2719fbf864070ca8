"""hybridlsm: hybrid physics-machine-learning land-surface modelling in JAX."""

__version__ = "0.1.0"
