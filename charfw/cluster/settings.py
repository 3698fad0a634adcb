"""Which cluster a build trains on: `cluster:` in charfw.yaml, or CHARFW_RAY_ADDRESS alone."""

from __future__ import annotations

import os

from charfw.config.models import ClusterSettings

ENV = "CHARFW_RAY_ADDRESS"


def cluster_settings(configured: ClusterSettings | None, env: dict | None = None) -> ClusterSettings | None:
    """The cluster in use: CHARFW_RAY_ADDRESS sets (or overrides) the address; None: train here."""
    address = (os.environ if env is None else env).get(ENV, "").strip()
    if address:
        return (configured or ClusterSettings()).model_copy(update={"address": address})
    return configured
