"""The contract of every model that is a ``ColumnModel`` (physics, hybrid_param, hybrid_flux,
hybrid_lstm): saving its offsets' layout, prediction, provenance, and streaming over grids beyond
memory."""

from __future__ import annotations

import numpy as np

from ..domain import Domain
from .column import (
    COLUMN_TARGETS,
    ColumnModel,
    column_provenance,
    column_skeleton,
    column_structure,
    domain_params,
    predict_column_model,
)
from .registry import EquinoxSpec, check_time_step
from .streaming import check_streamable, stream_column_model

__all__ = ["ColumnSpec"]


class ColumnSpec(EquinoxSpec):
    """The spec of a model that is a ColumnModel: saved with its offsets' layout, predicts with
    ``predict_column_model``, says where each column's parameters come from."""

    targets = COLUMN_TARGETS

    def structure(self, model: ColumnModel) -> dict:
        return column_structure(model)

    def skeleton(self, options, structure: dict) -> ColumnModel:
        return column_skeleton(self.build(options), structure)

    def check_domain(self, model: ColumnModel, domain: Domain) -> None:
        if model.dynamic_net is not None:  # per-step networks (hybrid_param, hybrid_flux) run at any step
            check_time_step(self.name, model.time_steps, domain)
        if model.static_inputs:  # each column's static attributes (an unknown one is a DataError), before writing
            domain_params(model, domain)

    def predict(self, model: ColumnModel, domain: Domain) -> dict[str, np.ndarray]:
        self.check_domain(model, domain)
        return predict_column_model(model, domain)

    def provenance(self, model: ColumnModel, domain: Domain) -> list[str]:
        return column_provenance(model, domain)

    def check_stream(self, model: ColumnModel) -> None:
        check_streamable(model)

    def stream(self, model: ColumnModel, source, store, **options):
        return stream_column_model(model, source, store, **options)
