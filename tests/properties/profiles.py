"""How hard the property tests try: bounded for the normal suite, heavier on demand.

``FERRYMAN_HYPOTHESIS_PROFILE=long`` (``make properties``) multiplies the
examples and lengthens the state machine's runs, for a developer or a soak
run; the default keeps the property tests to well under a minute on both
stores together.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILES = {"default": (1, 25), "long": (20, 80)}
PROFILE = os.environ.get("FERRYMAN_HYPOTHESIS_PROFILE", "default")
if PROFILE not in PROFILES:
    raise RuntimeError(
        f"FERRYMAN_HYPOTHESIS_PROFILE={PROFILE!r}: expected one of {', '.join(PROFILES)}"
    )
SCALE, STEPS = PROFILES[PROFILE]


def bounded(max_examples: int, *, steps: int | None = None) -> settings:
    """Settings for one property test: ``max_examples`` times the profile's scale.

    No deadline: the store's timing on a loaded machine says nothing about
    correctness. The fixtures (one store, one S3 bucket, one folder) are
    shared by the examples of a test on purpose, each example working under
    names of its own, so hypothesis's check for function-scoped fixtures is
    off; generated inputs are large on purpose (64 KiB keys), so the
    size checks are off too.
    """
    return settings(
        max_examples=max_examples * SCALE,
        stateful_step_count=steps if steps is not None else STEPS,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
