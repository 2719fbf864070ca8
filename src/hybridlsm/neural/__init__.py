"""Equinox building blocks: MLP, LSTM, heads (bounded, energy-split, Gaussian), MC-dropout
prediction (:func:`mc_dropout`) and the gridded spatiotemporal parameteriser of seed 000
(:class:`SpatiotemporalParameteriser`, with :class:`VariableFusion` and :func:`physical_features`).

Non-trainable leaves (normalisation statistics, bounds) live in :class:`NonTrainable` sub-modules;
:func:`trainable_filter` is the filter spec that excludes them from training.
"""

from hybridlsm.neural._heads import TARGET_STD_RANGE, BoundedHead, EnergySplitHead, GaussianHead
from hybridlsm.neural._lstm import LSTM
from hybridlsm.neural._mc import MC_KEY, MC_SAMPLES, dropout_rate, mc_batch_size, mc_dropout
from hybridlsm.neural._mlp import MLP
from hybridlsm.neural._normaliser import NonTrainable, Normaliser, trainable_filter
from hybridlsm.neural._spatiotemporal import (
    PARAMETER_BOUNDS,
    CosineAttention,
    SpatiotemporalOptions,
    SpatiotemporalParameteriser,
    VariableFusion,
    physical_features,
)

__all__ = [
    "LSTM",
    "MLP",
    "BoundedHead",
    "CosineAttention",
    "EnergySplitHead",
    "GaussianHead",
    "MC_KEY",
    "MC_SAMPLES",
    "NonTrainable",
    "Normaliser",
    "PARAMETER_BOUNDS",
    "TARGET_STD_RANGE",
    "SpatiotemporalOptions",
    "SpatiotemporalParameteriser",
    "VariableFusion",
    "dropout_rate",
    "mc_batch_size",
    "mc_dropout",
    "physical_features",
    "trainable_filter",
]
