"""Settings shared by the whole test suite: hypothesis profiles."""

import os

from hypothesis import HealthCheck, settings

# A quick default for the edit-test loop, and a thorough profile that CI selects with
# HYPOTHESIS_PROFILE=ci. No deadline: these machines are shared and noisy, and timing is the
# benchmarks' job, never a unit test's.
settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
