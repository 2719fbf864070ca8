"""The declared land-model interface every physics model and hybrid implements.

As Diffrax declares ``AbstractSolver`` (an abstract Equinox module whose concrete subclasses are
final), a land model is an :class:`AbstractLandModel` with three abstract calls, one argument order
everywhere::

    state = model.init_state(params, forcing)               # forcing (T, N) or (N,)
    state, fluxes = model.step(state, forcing_t, params, key=None)  # one step, (N,) arrays
    outputs = model.observe(state, fluxes)                  # {ALMA name: (N,) array}

and one concrete one, ``state_change(old, new)``, which spin-up uses to decide convergence (no
probing of the state's fields). The class attribute ``checkpoint_each_step`` tells the rollout how to
differentiate the step. ``step`` returns typed fluxes (``LaDFluxes``): a wrapper that
computes extra diagnostics puts them in ``fluxes.diagnostics`` and ``observe`` reports them under
their names. The rollout functions (``rollout``, ``rollout_reduce``, ``simulate``, ``spin_up``)
take any ``AbstractLandModel``; NeuralGCM's encode / advance / decode separation maps to
``init_state`` / ``step`` / ``observe``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["AbstractLandModel"]


class AbstractLandModel(eqx.Module):
    """A land model: ``init_state``, ``step``, ``observe`` (abstract) and ``state_change``."""

    #: reverse mode through ``physics.rollout`` stores the carry of every step and recomputes the step
    #: instead of storing its residual arrays (LaD: ~700 operations and 342 residuals per step, whose
    #: memory traffic costs more than the recomputation: docs/performance.md); a model whose step is a
    #: few operations, with residuals no larger than its carry, sets False
    checkpoint_each_step: ClassVar[bool] = True

    @abc.abstractmethod
    def init_state(self, params: dict, forcing: Any) -> Any:
        """The initial state for ``params`` ((N,) arrays) and ``forcing`` ((T, N) or (N,))."""

    @abc.abstractmethod
    def step(self, state: Any, forcing: Any, params: dict, key: jax.Array | None = None) -> tuple[Any, Any]:
        """Advance one step of ``forcing.time_step_s``: ``(new_state, fluxes)``; pure and jit-able.
        ``key`` reaches networks inside the model (dropout); None runs them deterministically."""

    @abc.abstractmethod
    def observe(self, state: Any, fluxes: Any) -> dict[str, jax.Array]:
        """ALMA-named outputs of a step from the new state and the step's fluxes."""

    def with_exchange_law(self, law: Any) -> AbstractLandModel:
        """This model with the exchange coefficient K_h given by ``law`` (a closed form found by
        ``hybridlsm discover``) in place of whatever set it; the rest of the model unchanged."""
        raise NotImplementedError(f"{type(self).__name__} has no exchange coefficient a law could replace")

    def state_change(self, old: Any, new: Any) -> tuple[float, float]:
        """(largest temperature change [K], largest water-store change [kg m-2]) between two
        states; the default treats every array leaf as a temperature."""
        a = jax.tree_util.tree_leaves(eqx.filter(old, eqx.is_array))
        b = jax.tree_util.tree_leaves(eqx.filter(new, eqx.is_array))
        return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b)), 0.0
