"""Shared fixtures. Hypothesis profiles: QB_HYPOTHESIS_PROFILE=ci (default), dev, thorough."""

import gc
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=20, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("QB_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _no_degradation_warnings():
    """The throughput warning depends on machine load; only its own tests turn it on."""
    import quantbridge as qb

    qb.configure_metrics(degradation_fraction=0.0)


@pytest.fixture
def no_leaked_exports():
    """Fails the test if a DLPack export's deleter did not run once the results are gone."""
    from quantbridge import _native

    gc.collect()
    before = _native._live_exports()
    yield
    gc.collect()
    assert _native._live_exports() == before


@pytest.fixture(scope="session")
def ggml(tmp_path_factory):
    """ggml's reference quantizers, built once per session (tests/python/ggml_reference.py)."""
    from ggml_reference import Reference, build

    return Reference(build(tmp_path_factory.mktemp("ggml")))
