"""LSTM sequence model: an ``eqx.nn.LSTMCell`` scanned over time, with a linear head."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from hybridlsm.neural._common import check_rate, dropout, float_dtype, linear, uniform_tensors
from hybridlsm.neural._normaliser import Normaliser, input_normaliser

__all__ = ["LSTM"]

LSTMState = tuple[Array, Array]


class LSTM(eqx.Module):
    """Sequence-to-sequence LSTM, **time-major** like the physics rollout.

    ``x`` of shape ``(T, in_size)`` gives ``(T, out_size)``; ``(T, N, in_size)`` (N sites, cells or
    windows) gives ``(T, N, out_size)``, the N sequences being independent (``vmap``). Inputs are
    standardised by the stored non-trainable :class:`Normaliser`; the hidden state passes through
    dropout (only when a key is given: training or MC dropout) and a linear head. The model is
    causal: output ``t`` depends on inputs ``0..t`` only.

    ``forget_bias`` is added to the forget-gate bias at initialisation (a common choice that helps
    long memory; the value then trains).
    """

    normaliser: Normaliser
    cell: eqx.nn.LSTMCell
    head: eqx.nn.Linear
    dropout: float = eqx.field(static=True)
    in_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        hidden_size: int = 64,
        dropout: float = 0.0,
        forget_bias: float = 1.0,
        mean: ArrayLike | None = None,
        std: ArrayLike | None = None,
        dtype: Any = None,
        *,
        key: PRNGKeyArray,
    ):
        if in_size < 1 or out_size < 1 or hidden_size < 1:
            raise ValueError(
                f"LSTM: need in_size, out_size, hidden_size >= 1; got {in_size}, {out_size}, {hidden_size}"
            )
        # Equinox's default initialisation (U(+-1/sqrt(hidden)) for the cell, U(+-1/sqrt(fan_in)) for
        # the head), drawn in one random call.
        dtype = float_dtype(dtype)
        lim = 1.0 / math.sqrt(hidden_size)
        w_ih, w_hh, bias, w_out, b_out = uniform_tensors(
            key,
            [((4 * hidden_size, in_size), lim), ((4 * hidden_size, hidden_size), lim),
             ((4 * hidden_size,), lim), ((out_size, hidden_size), lim), ((out_size,), lim)],
            dtype,
        )  # fmt: skip
        bias[hidden_size : 2 * hidden_size] += forget_bias
        w_ih, w_hh, bias, w_out, b_out = (jnp.asarray(a) for a in (w_ih, w_hh, bias, w_out, b_out))
        cell = eqx.filter_eval_shape(lambda: eqx.nn.LSTMCell(in_size, hidden_size, dtype=dtype, key=jax.random.key(0)))
        self.cell = eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias), cell, (w_ih, w_hh, bias))
        head = eqx.filter_eval_shape(lambda: eqx.nn.Linear(hidden_size, out_size, dtype=dtype, key=jax.random.key(0)))
        self.head = eqx.tree_at(lambda h: (h.weight, h.bias), head, (w_out, b_out))
        self.normaliser = input_normaliser("LSTM", in_size, mean, std, dtype)
        self.dropout = check_rate("LSTM dropout", dropout)
        self.in_size = in_size
        self.hidden_size = hidden_size
        self.out_size = out_size

    def initial_state(self, batch: int | None = None) -> LSTMState:
        """Zero ``(h, c)``; shape ``(hidden,)`` or ``(batch, hidden)``."""
        dtype = self.head.weight.dtype
        shape = (self.hidden_size,) if batch is None else (batch, self.hidden_size)
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    def _scan_one(self, x: Array, state: LSTMState) -> tuple[Array, LSTMState]:
        # The input projection does not depend on the state: one matmul for all steps, then scan.
        cell = self.cell
        xn = self.normaliser(x)
        x_proj = xn @ cell.weight_ih.T
        if cell.use_bias:
            x_proj = x_proj + cell.bias

        def step(carry: LSTMState, xp: Array) -> tuple[LSTMState, Array]:
            h, c = carry
            i, f, g, o = jnp.split(xp + cell.weight_hh @ h, 4)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        final, hs = jax.lax.scan(step, state, x_proj)
        return hs, final

    def scan(
        self,
        x: Float[Array, "T *N in_size"],
        state: LSTMState | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "T *N out_size"], LSTMState]:
        """Run over ``x`` from ``state`` (zeros by default); return outputs and the final state.

        Carrying the final state into the next call continues the sequence exactly.
        """
        if x.shape[-1] != self.in_size:
            raise ValueError(f"LSTM expects {self.in_size} input features, got {x.shape[-1]}")
        if x.ndim == 2:
            state = self.initial_state() if state is None else state
            hs, final = self._scan_one(x, state)
        elif x.ndim == 3:
            state = self.initial_state(x.shape[1]) if state is None else state
            hs, final = jax.vmap(self._scan_one, in_axes=(1, 0), out_axes=(1, 0))(x, state)
        else:
            raise ValueError(f"LSTM expects (T, in_size) or (T, N, in_size), got shape {x.shape}")
        hs = dropout(hs, self.dropout, key)
        return linear(self.head, hs), final

    def __call__(
        self, x: Float[Array, "T *N in_size"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "T *N out_size"]:
        """Outputs for every time step, starting from a zero state."""
        return self.scan(x, key=key)[0]
