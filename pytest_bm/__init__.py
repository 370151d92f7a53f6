"""pytest_bm: the ``bm_fake_ingest`` pytest fixture, a real loopback ingest endpoint.

Not built yet: the plugin module is registered under the ``pytest11`` entry point and provides
no fixtures until the issue "pytest_bm: the bm_fake_ingest fixture" is done.
"""

__all__: list[str] = []
