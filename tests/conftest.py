"""Settings for the whole suite.

Hypothesis' per-example deadline (200 ms) and its too_slow health check are timing assertions:
on the loaded 2-core CI machine a property test can cross them with correct code (one did,
288 ms, in test_h2_headers). Timing belongs in bench/, so neither applies here; each test's own
`max_examples` still bounds its run."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("meshwarden", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("meshwarden")
