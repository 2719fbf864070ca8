"""Training: strict YAML config, the generic trainer, loss terms and checkpoints."""

from hybridlsm.training.checkpoint import CheckpointError
from hybridlsm.training.config import (
    ConfigError,
    RunConfig,
    TrainConfig,
    load_config,
    validate_config,
    write_config,
)
from hybridlsm.training.losses import (
    DiscoveryLaw,
    discovery_loss,
    energy_residual_loss,
    gaussian_nll,
    masked_mse,
    sparsity_l1,
    total_loss,
)
from hybridlsm.training.trainer import FitResult, fit, learning_rate, loss_weights

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DiscoveryLaw",
    "FitResult",
    "RunConfig",
    "TrainConfig",
    "discovery_loss",
    "energy_residual_loss",
    "fit",
    "gaussian_nll",
    "learning_rate",
    "load_config",
    "loss_weights",
    "masked_mse",
    "sparsity_l1",
    "total_loss",
    "validate_config",
    "write_config",
]
