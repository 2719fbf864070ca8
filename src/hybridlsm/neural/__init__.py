"""Equinox building blocks: MLP, LSTM, heads (bounded, energy-split, Gaussian) and MC-dropout
prediction (:func:`mc_dropout`).

Non-trainable leaves (normalisation statistics, bounds) live in :class:`NonTrainable` sub-modules;
:func:`trainable_filter` is the filter spec that excludes them from training.
"""

from hybridlsm.neural._heads import BoundedHead, EnergySplitHead, GaussianHead
from hybridlsm.neural._lstm import LSTM
from hybridlsm.neural._mc import MC_KEY, MC_SAMPLES, dropout_rate, mc_batch_size, mc_dropout
from hybridlsm.neural._mlp import MLP
from hybridlsm.neural._normaliser import NonTrainable, Normaliser, trainable_filter

__all__ = [
    "LSTM",
    "MLP",
    "BoundedHead",
    "EnergySplitHead",
    "GaussianHead",
    "MC_KEY",
    "MC_SAMPLES",
    "NonTrainable",
    "Normaliser",
    "dropout_rate",
    "mc_batch_size",
    "mc_dropout",
    "trainable_filter",
]
