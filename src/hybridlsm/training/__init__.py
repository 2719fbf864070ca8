"""Training: the generic trainer, loss terms, windows and batches of the rollout models, checkpoints
(the run configuration is ``hybridlsm.config``)."""

from hybridlsm.training.checkpoint import CheckpointError
from hybridlsm.training.losses import (
    discovery_loss,
    energy_residual_loss,
    gaussian_nll,
    masked_mse,
    sparsity_l1,
    total_loss,
)
from hybridlsm.training.trainer import FitResult, TrainingError, fit, learning_rate, loss_weights

__all__ = [
    "TrainingError",
    "CheckpointError",
    "FitResult",
    "discovery_loss",
    "energy_residual_loss",
    "fit",
    "gaussian_nll",
    "learning_rate",
    "loss_weights",
    "masked_mse",
    "sparsity_l1",
    "total_loss",
]
