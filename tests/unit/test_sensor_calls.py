"""Calling sensor code with a timeout: on threads kept between calls, never on a late one."""

from __future__ import annotations

import os
import threading

from ferryman.sensors.calls import call_with_timeout


def _calling_thread() -> threading.Thread:
    return threading.current_thread()


def test_calls_reuse_a_thread_and_a_late_call_keeps_its_own() -> None:
    name = "ferryman-sensor-reuse"
    first = call_with_timeout(_calling_thread, 5, name=name).value
    assert first is not None and first is not threading.current_thread()
    assert call_with_timeout(_calling_thread, 5, name=name).value is first

    release = threading.Event()

    def hung() -> threading.Thread:
        release.wait(30)
        return threading.current_thread()

    assert call_with_timeout(hung, 0.1, name=name).timed_out
    # The next call does not wait behind the late one: it gets another thread.
    after = call_with_timeout(_calling_thread, 5, name=name).value
    assert after is not None and after is not first
    release.set()
    first.join(10)  # the abandoned thread ends once its late call returns
    assert not first.is_alive()


def test_a_forked_child_calls_on_threads_of_its_own() -> None:
    """The parent's idle threads do not exist in a child: its calls must not wait for them."""
    name = "ferryman-sensor-fork"
    assert call_with_timeout(lambda: 1, 5, name=name).value == 1  # leaves a thread idle
    pid = os.fork()
    if pid == 0:
        answered = call_with_timeout(lambda: 42, 5, name=name)
        os._exit(0 if answered.value == 42 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
