"""Optimizers: the generic stochastic LMO driver and its configurations (see DESIGN.md, "Driver layer")."""

__all__: list[str] = []
