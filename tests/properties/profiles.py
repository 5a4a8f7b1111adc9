"""How hard the property tests try: bounded for the normal suite, heavier on demand.

``FERRYMAN_HYPOTHESIS_PROFILE=long`` (``make properties``) multiplies the
examples, lengthens the state machine's runs and shrinks a failure to a
minimal example, for a developer or a soak run. The default keeps the
property tests to about a minute on both stores together and reports a
failure as found: shrinking an example that talks to a database can take
longer than the suite's time limit. A failure is kept in hypothesis's
example database (``.hypothesis/``), so running the long profile next
starts with it and shrinks it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

PROFILES = {"default": (1, 25), "long": (10, 60)}
PROFILE = os.environ.get("FERRYMAN_HYPOTHESIS_PROFILE", "default")
if PROFILE not in PROFILES:
    raise RuntimeError(
        f"FERRYMAN_HYPOTHESIS_PROFILE={PROFILE!r}: expected one of {', '.join(PROFILES)}"
    )
SCALE, STEPS = PROFILES[PROFILE]
PHASES = tuple(Phase) if PROFILE == "long" else (Phase.explicit, Phase.reuse, Phase.generate)


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
        phases=PHASES,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
