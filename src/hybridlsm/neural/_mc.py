"""Monte-Carlo dropout prediction: the mean and the predictive SD over stochastic forward passes.

A model with dropout predicts by running ``n`` forward passes with dropout on (one PRNG key per
pass; Gal & Ghahramani 2016) and reports their mean. For an output y with samples of mean mu_s
(and, where the network has a heteroscedastic head, an aleatoric variance sigma_s^2 per sample),
the law of total variance splits the predictive variance:

    Var[y] = Var_s[mu_s] + E_s[sigma_s^2]    (epistemic + aleatoric)

``<y>_sd_epistemic`` is the sample SD of the mu_s (ddof 1, as eq. 10 of seed 000),
``<y>_sd_aleatoric`` the root of the mean sigma_s^2 (only when the samples carry ``<y>_var``),
``<y>_sd`` the total. Without an aleatoric part the total equals the epistemic part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from hybridlsm.neural._lstm import LSTM
from hybridlsm.neural._mlp import MLP
from hybridlsm.neural._spatiotemporal import SpatiotemporalParameteriser

_DROPOUT_NETS = (MLP, LSTM, SpatiotemporalParameteriser)

__all__ = ["MC_BATCH_BYTES", "MC_KEY", "MC_SAMPLES", "dropout_rate", "mc_batch_size", "mc_dropout"]

#: passes of an MC-dropout prediction (seed 000: 50 passes at dropout rate 0.15)
MC_SAMPLES = 50
#: seed of the prediction key when none is given (predictions are reproducible)
MC_KEY = 0
#: memory of the outputs of the samples run at once (vmapped); more samples run as a loop
MC_BATCH_BYTES = 1 << 30


def dropout_rate(tree) -> float:
    """The largest dropout rate of the networks (MLP, LSTM, the spatiotemporal parameteriser) in
    ``tree``; 0: deterministic."""
    nets = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, _DROPOUT_NETS))
    return max((n.dropout for n in nets if isinstance(n, _DROPOUT_NETS)), default=0.0)


def mc_batch_size(n_samples: int, bytes_per_sample: int, budget: int = MC_BATCH_BYTES) -> int:
    """Samples per vmapped batch: all of them if their outputs fit in ``budget``, else fewer, in
    batches of equal size (at most one more compilation for the last)."""
    most = max(1, budget // max(1, int(bytes_per_sample)))
    n_batches = -(-n_samples // most)
    return -(-n_samples // n_batches)


def mc_dropout(sample: Callable[[PRNGKeyArray], dict], key: PRNGKeyArray, n_samples: int,
               targets: Sequence[str], batch_size: int) -> dict[str, np.ndarray]:
    """Mean of every output over ``n_samples`` stochastic passes, and for ``targets`` the SDs of
    the module docstring.

    Args:
        sample: ``keys (B,) -> {name: (B, ...)}``, one pass per key (dropout on); a name
            ``<target>_var`` is that target's aleatoric variance of each pass
        key: sample s uses key s of ``jax.random.split(key, n_samples)`` (the same samples
            whatever the batching)
        targets: outputs that get ``_sd``, ``_sd_epistemic`` (and ``_sd_aleatoric``)
        batch_size: passes run at once (``mc_batch_size``)

    Returns:
        ``{name: (...)}`` float64 means (``<target>_var`` left out) and the SDs.
    """
    if n_samples < 2:
        raise ValueError(f"MC dropout needs at least 2 samples for a spread, got {n_samples}")
    keys = jax.random.split(key, n_samples)
    n, mean, m2 = 0, {}, {}
    for start in range(0, n_samples, batch_size):
        batch = {k: np.asarray(v, np.float64) for k, v in sample(keys[start:start + batch_size]).items()}
        b = len(next(iter(batch.values())))
        for k, v in batch.items():
            v_mean = v.mean(0)
            delta = v_mean - mean[k] if n else 0.0
            if k in targets:  # centred sums of squares, merged batch by batch (Chan et al. 1979)
                m2[k] = ((v - v_mean) ** 2).sum(0) + (m2[k] + delta**2 * n * b / (n + b) if n else 0.0)
            mean[k] = mean[k] + delta * b / (n + b) if n else v_mean
        n += b
    out = {k: v for k, v in mean.items() if not (k.endswith("_var") and k[:-4] in targets)}
    for t in targets:
        epistemic = m2[t] / (n - 1)
        aleatoric = mean.get(f"{t}_var")
        out[f"{t}_sd_epistemic"] = np.sqrt(epistemic)
        if aleatoric is not None:
            out[f"{t}_sd_aleatoric"] = np.sqrt(aleatoric)
        out[f"{t}_sd"] = np.sqrt(epistemic + (0.0 if aleatoric is None else aleatoric))
    return out
