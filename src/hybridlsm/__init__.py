"""hybridlsm: hybrid physics-machine-learning land-surface modelling in JAX."""

import os as _os

# XLA's CPU fusion emitters compile the long scan bodies of the rollout 1.3-4x more slowly without
# any run-time gain here; turn them off unless the user chose otherwise (effective only if jax has
# not started its backend yet).
if "xla_cpu_use_fusion_emitters" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()

__version__ = "0.1.0"
