"""Equinox building blocks: MLP, LSTM, and heads (bounded, energy-split, Gaussian).

Non-trainable leaves (normalisation statistics, bounds) live in :class:`NonTrainable` sub-modules;
:func:`trainable_filter` is the filter spec that excludes them from training.
"""

from hybridlsm.neural._heads import BoundedHead, EnergySplitHead, GaussianHead
from hybridlsm.neural._lstm import LSTM
from hybridlsm.neural._mlp import MLP
from hybridlsm.neural._normaliser import NonTrainable, Normaliser, trainable_filter

__all__ = [
    "LSTM",
    "MLP",
    "BoundedHead",
    "EnergySplitHead",
    "GaussianHead",
    "NonTrainable",
    "Normaliser",
    "trainable_filter",
]
