"""Test configuration: float64 on (torch parity in double), one CPU device; the
facade's two state layouts as a fixture."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(params=["per-leaf", "packed"])
def layout(request, monkeypatch):
    """Every leaf stepped alone, or (elementwise algorithms) the small leaves of a
    group stepped packed (:mod:`functorch_optim.packing`), however few."""
    from functorch_optim import packing  # after x64 is on

    if request.param == "packed":
        monkeypatch.setattr(packing, "MIN_PACKED_LEAVES", 2)
    else:
        monkeypatch.setattr(packing, "MAX_PACKED_SIZE", -1)
    return request.param
