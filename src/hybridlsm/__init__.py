"""hybridlsm: hybrid physics-machine-learning land-surface modelling in JAX."""

import os as _os

# XLA's CPU fusion emitters compile the rollout's scan bodies 1.3-4x more slowly; site-scale
# training and the test suite are dominated by compilation, so they are off by default for the
# process. They make large batches run 40-50 % faster (docs/performance.md), and XLA accepts the
# option per executable: the large-grid forward ``hybridlsm.physics.simulate`` turns them on for
# its own executable, as does any ``jax.jit(f, compiler_options=physics.RUN_TIME_OPTIONS)``.
# XLA_FLAGS=--xla_cpu_use_fusion_emitters=true (set before import) turns them on everywhere.
# The default is effective only if jax has not started its backend yet.
if "xla_cpu_use_fusion_emitters" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()

__version__ = "0.1.0"
