"""Test configuration: float64 on (torch parity in double), one CPU device; the
facade's two state layouts as a fixture; the sharding checks' subprocess started
at collection."""

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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Start the 8-device sharding checks (tests/test_sharding.py) in the background
    once a test that reads them is selected, so they run alongside the others."""
    if config.option.collectonly:
        return
    if any(
        item.path.name == "test_sharding.py"
        and "results" in getattr(item, "fixturenames", ())
        for item in items
    ):
        import test_sharding

        test_sharding.start_checks(test_sharding.shared_dir(config._tmp_path_factory))
