"""The worker: claim due runs under a lease, execute them, commit outcomes fenced.

Threads of one worker process, each named and supervised:

* the caller's thread runs the **claim loop**: it leases runs in batches for
* ``concurrency`` **job threads**, which call the job functions — or, for
  ``async def`` jobs, one **event loop** that runs up to ``concurrency`` of
  them at once as tasks (:mod:`ferryman.worker.async_jobs`) — and produce
  outcomes, which
* the **committer** writes, many per transaction (group commit) — a run counts
  as done only once its outcome is durable;
* the **heartbeat** renews every held lease each ``lease_seconds / 3`` and
  flags runs whose lease was lost.

Each is started by :func:`ferryman.supervise.supervised`: a crash is logged
with its traceback, listed in :attr:`WorkReport.crashes` and written to the
worker's row in the store (``ferryman status``, the dashboard's workers page).
A crash of a worker thread stops the worker with an error; the runs it had
started are left to their leases, so a run that crashes every worker it
meets ends ``dead`` after ``max_attempts``, not handed back forever.

What a job's exception comes to: :mod:`ferryman.worker.outcomes`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ferryman.errors import ConfigurationError, FerrymanError, LeaseLost, StoreError
from ferryman.logs import process_id
from ferryman.store import ClaimedRun, Outcome, OutcomeKind, Store
from ferryman.store.dialect import Listener
from ferryman.supervise import CRASHES, supervised
from ferryman.supervise import describe_error as describe_error  # sensors import it here
from ferryman.worker.async_jobs import Attempts, EventLoop, is_async_job
from ferryman.worker.context import JobContext, PlanRuns
from ferryman.worker.deadlines import DeadlineWatcher, hung
from ferryman.worker.definitions import JobDefinition as JobDefinition  # imported from here
from ferryman.worker.definitions import WorkReport as WorkReport
from ferryman.worker.outages import STORE_RETRY, Outages, register
from ferryman.worker.outcomes import failure, next_batch
from ferryman.worker.pacing import MAX_CLAIM, Pacer
from ferryman.worker.signals import on_stop_signals

log = logging.getLogger("ferryman.worker")

JOB_THREAD_JOIN = 1.0  # seconds a stopping worker waits for its idle job threads to end


def new_worker_id() -> str:
    return f"{process_id()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class _Held:
    run: ClaimedRun
    context: JobContext | None = None


class Worker:
    def __init__(
        self,
        store: Store,
        jobs: dict[str, JobDefinition],
        *,
        lease_seconds: float,
        concurrency: int = 4,
        prefetch: int | None = None,
        claim_batch: int = MAX_CLAIM,
        poll_interval: float = 0.5,
        grace_seconds: float = 30.0,
        worker_id: str | None = None,
        on_outcome: Callable[[ClaimedRun, str], None] | None = None,
        plan_runs: PlanRuns | None = None,
        exit_when_hung: Callable[[], object] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        if not jobs:
            raise ConfigurationError("this app has no jobs to work on")
        self.store = store
        self.jobs = jobs
        self.lease_seconds = lease_seconds
        self.concurrency = concurrency
        # Runs held: one per slot plus a prefetch (pacing.py), as of the last look.
        self._pacer = Pacer(concurrency, prefetch)
        self.capacity = concurrency
        self.claim_batch = claim_batch
        self._refill_at = 1
        self.poll_interval = poll_interval
        self.grace_seconds = grace_seconds
        self.worker_id = worker_id or new_worker_id()
        self.report = WorkReport(worker_id=self.worker_id)
        self._on_outcome = on_outcome
        self._held: dict[int, _Held] = {}
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._abandon = threading.Event()  # stop waiting for running jobs
        self._closed = threading.Event()
        self._unstarted: list[ClaimedRun] = []  # claimed, but stopping began before they ran
        self._runnable: queue.SimpleQueue[ClaimedRun | None] = queue.SimpleQueue()
        # async def jobs run as tasks on one event loop, not on job threads
        self._async_jobs = {name for name, job in jobs.items() if is_async_job(job.fn)}
        self._event_loop = self._new_event_loop()
        self._job_threads = 0 if len(self._async_jobs) == len(jobs) else concurrency
        self._outcomes: queue.SimpleQueue[tuple[ClaimedRun, Outcome] | None] = queue.SimpleQueue()
        self._crash: BaseException | None = None
        self._outages = Outages(store, self.worker_id, stop_trying=self._closed)
        self._listener: Listener | None = None
        self._threads: list[threading.Thread] = []
        self._crash_mark = CRASHES.mark()
        self._plan_runs = plan_runs  # for ctx.submit
        self.exit_when_hung = exit_when_hung  # a worker process: its last words when a job hangs
        self._deadlines = self._new_deadline_watcher()

    def _new_event_loop(self) -> EventLoop:
        """The loop of async def jobs: their attempts begin and settle as on a job thread."""
        attempts = Attempts(
            deferred=self._deferred,
            begin=self._begin,
            settle=self._settle,
            ended=self._attempt_ended,
            call=lambda run, context: self.jobs[run.job].fn(context, run.payload),
        )
        return EventLoop(concurrency=self.concurrency, attempts=attempts)

    def _new_deadline_watcher(self) -> DeadlineWatcher | None:
        """The watcher of attempts' deadlines, if any job has a timeout."""
        if all(job.timeout is None for job in self.jobs.values()):
            return None
        return DeadlineWatcher(
            self.store,
            self.worker_id,
            grace_seconds=self.grace_seconds,
            closed=self._closed,
            on_ended=self._timed_out,
            on_hung=self._hung,
        )

    # -- public --------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running jobs get ``grace_seconds`` to finish."""
        if self._stopping.is_set():
            self._abandon.set()
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def run(self, *, until_idle: bool = False, handle_signals: bool = True) -> WorkReport:
        restore = (
            on_stop_signals(self.stop, "no new claims; a second signal stops waiting")
            if handle_signals
            else None
        )
        if not register(self.store, self.worker_id, list(self.jobs), stopping=self._stopping):
            # stopped before the store could be written
            if restore:
                restore()
            return self.report
        interrupted: KeyboardInterrupt | None = None
        try:
            self._start_threads()
            try:
                self._claim_loop(until_idle)
            except KeyboardInterrupt as exc:
                # Ctrl-C without our signal handlers: stop as SIGINT would.
                log.info("interrupted: no new claims; a second interrupt stops waiting")
                interrupted = exc
                self._outages.orphans_possible = True  # it may have cut a claim short
                self.stop()
            if not self._drain():
                interrupted = interrupted or KeyboardInterrupt()
            if self._outages.orphans_possible:
                self._release_orphans()
        finally:
            self._shutdown()
            if restore:
                restore()
        if self._crash is not None:
            raise FerrymanError(f"worker {self.worker_id} stopped: {self._crash}") from self._crash
        if interrupted is not None:
            raise interrupted
        return self.report

    # -- claim loop ----------------------------------------------------------

    def _claim_loop(self, until_idle: bool) -> None:
        failures = 0
        while not self._stopping.is_set():
            with self._changed:
                self.capacity = self._pacer.capacity()
                self._refill_at = max(1, min(self.claim_batch, self.capacity) // 2)
                room = self.capacity - len(self._held)
                # While job threads still have claimed runs waiting, let room
                # build up to a real batch: one claim transaction per handful
                # of runs would cost more than the runs themselves.
                starving = self._waiting() == 0
                if room <= 0 or (not starving and room < self._refill_at):
                    self._changed.wait(self.poll_interval)
                    continue
                # Idle only counts if nothing was held before this claim: a run
                # finishing meanwhile may have been requeued for an immediate retry.
                nothing_held = not self._held
            try:
                claimed = self.store.claim(
                    worker_id=self.worker_id,
                    jobs=self.jobs,  # with their definitions: the store reads their limits
                    limit=min(room, self.claim_batch),
                    lease_seconds=self.lease_seconds,
                )
                failures = 0
            except StoreError as exc:
                failures += 1
                # The claim may have committed with its answer lost on the way.
                self._outages.orphans_possible = True
                delay = STORE_RETRY.delay(failures, self.worker_id)
                log.warning("claim failed, retrying in %.1fs: %s", delay, exc)
                self._stopping.wait(delay)
                continue
            if claimed:
                self.report.claimed += len(claimed)
                entries = {run.id: _Held(run) for run in claimed}
                with self._changed:
                    self._held.update(entries)
                for run in claimed:
                    if run.job in self._async_jobs:
                        self._event_loop.submit(run)
                    else:
                        self._runnable.put(run)
            if self._outages.orphans_possible and self._release_orphans():
                continue  # they are due again: claim at once
            if claimed:
                continue
            if until_idle and nothing_held:
                return
            with self._changed:
                if until_idle and not self._held:
                    continue  # the last run finished during the claim: check once more
                self._changed.wait(self.poll_interval)

    def _release_orphans(self) -> bool:
        """Release runs a failed claim leased to this worker all the same; any released?"""
        with self._changed:
            held = set(self._held)
        released = self._outages.release_orphans(held)
        with self._changed:
            self.report.released += released
        return released > 0

    def _drain(self) -> bool:
        """Wait for held runs to finish, then release what is left.

        Returns False if a KeyboardInterrupt cut the wait short (what is left
        is released all the same).
        """
        calm = self._wait_for_held()
        with self._changed:
            # After a crash, a run that had started keeps its lease, so that
            # its attempt counts: a run that crashes every worker it meets
            # ends dead instead of being handed back for ever.
            crashed = self._crash is not None
            kept = [h.run for h in self._held.values() if crashed and h.context is not None]
            leftovers = [h.run for h in self._held.values() if not crashed or h.context is None]
            leftovers += self._unstarted
            self._unstarted = []
        if kept:
            log.warning(
                "%d runs this crashed worker had started keep their leases; when those "
                "expire another worker takes them over, using an attempt",
                len(kept),
            )
        if not leftovers:
            return calm
        # Releasing bumps the lease token, so the jobs still running here can no
        # longer commit: whoever claims the runs next owns them alone.
        try:
            released = self.store.release(
                [run.lease for run in leftovers],
                worker_id=self.worker_id,
                reason="worker stopped before the job finished",
            )
        except StoreError as exc:
            log.error(
                "could not release %d runs; their leases will expire: %s", len(leftovers), exc
            )
            return calm
        self.report.released += len(released)
        log.info("released %d runs without using an attempt", len(released))
        return calm

    def _wait_for_held(self) -> bool:
        """Give held runs ``grace_seconds``; False if a KeyboardInterrupt ended the wait."""
        deadline = time.monotonic() + self.grace_seconds
        with self._changed:
            while self._held and self._crash is None and not self._abandon.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    self._changed.wait(min(remaining, self.poll_interval))
                except KeyboardInterrupt:
                    self._abandon.set()  # a second interrupt stops waiting, as a signal does
                    return False
        return True

    # -- threads -------------------------------------------------------------

    def _start_threads(self) -> None:
        def stop_worker(name: str) -> Callable[[BaseException], None]:
            def crashed(exc: BaseException) -> None:  # the worker cannot go on without it
                self._crash = exc
                self.report.errors.append(f"{name}: {exc!r}")
                self._stopping.set()
                self._abandon.set()
                with self._changed:
                    self._changed.notify_all()

            return crashed

        def start(name: str, target: Callable[[], None]) -> None:
            thread = supervised(f"ferryman-{name}", target, on_crash=stop_worker(name))
            self._threads.append(thread.thread)

        for index in range(self._job_threads):
            start(f"job-{index}", self._job_thread)
        if self._async_jobs:
            self._threads.append(self._event_loop.start(on_crash=stop_worker("event-loop")))
        start("committer", self._committer)
        start("heartbeat", self._heartbeat)
        if self._deadlines is not None:
            start("deadlines", self._deadlines.loop)
        self._listener = self.store.listener(
            lambda job: self.wake() if job in self.jobs else None, name="ferryman-listener"
        )
        if self._listener is not None:
            self._listener.start()

    def _shutdown(self) -> None:
        for _ in range(self._job_threads):
            self._runnable.put(None)
        if self._async_jobs:  # async jobs still running outlived the grace: cancelled
            self._event_loop.stop()
        self._outcomes.put(None)
        self._stopping.set()
        self._closed.set()
        if self._listener is not None:
            self._listener.stop()
        with self._changed:
            self._changed.notify_all()
        for thread in self._threads:
            if thread.name in ("ferryman-committer", "ferryman-heartbeat"):
                thread.join(timeout=self.lease_seconds)
        # Idle job threads end at the sentinel above; one still in a job that
        # outlived the grace is left behind (its run was released, it cannot commit).
        idle_by = time.monotonic() + JOB_THREAD_JOIN
        for thread in self._threads:
            if thread.name.startswith("ferryman-job-"):
                thread.join(timeout=max(0.0, idle_by - time.monotonic()))
        self.report.crashes = [str(crash) for crash in CRASHES.since(self._crash_mark)[1]]
        try:
            self.store.worker_stopped(self.worker_id, crashes=self._crashes())
        except StoreError as exc:
            log.warning("could not record the worker's stop: %s", exc)

    def _job_thread(self) -> None:
        while True:
            run = self._runnable.get()
            if run is None:
                return
            if not self._deferred(run):
                self._attempt_ended(run, self._execute(run))

    def _deferred(self, run: ClaimedRun) -> bool:
        """Stopping began before ``run`` started: keep it for release, no attempt used."""
        if not self._stopping.is_set():
            return False
        with self._changed:
            self._unstarted.append(run)
            self._held.pop(run.id, None)
            self._changed.notify_all()
        return True

    def _attempt_ended(self, run: ClaimedRun, outcome: Outcome | None) -> None:
        if outcome is None:
            self._forget(run)
        else:
            self._outcomes.put((run, outcome))

    def _execute(self, run: ClaimedRun) -> Outcome | None:
        context = self._begin(run)
        try:
            self.jobs[run.job].fn(context, run.payload)
        # Whatever the job raises ends its attempt, SystemExit and the other
        # BaseExceptions included: this is a job thread, so a KeyboardInterrupt
        # here was raised by the job, not by Ctrl-C (which reaches the claim loop).
        except BaseException as exc:
            return self._settle(run, context, exc)
        return self._settle(run, context, None)

    def _begin(self, run: ClaimedRun) -> JobContext:
        """The context of an attempt about to start, its deadline watched if it has one."""
        self._pacer.started(run.id)
        definition = self.jobs[run.job]
        context = JobContext(
            store=self.store,
            run=run,
            worker_id=self.worker_id,
            lease_seconds=self.lease_seconds,
            timeout=definition.timeout,
            plan_runs=self._plan_runs,
        )
        # Without the lock, which the claim loop and the committer take for
        # whole batches: the entry was added before the run was queued, and
        # a dict lookup and an attribute's assignment are each atomic.
        held = self._held.get(run.id)
        if held is not None:
            held.context = context
        if self._deadlines is not None and definition.timeout is not None:
            self._deadlines.watch(run, context, definition.timeout, definition.backoff)
        return context

    def _settle(
        self, run: ClaimedRun, context: JobContext, exc: BaseException | None
    ) -> Outcome | None:
        """The outcome of an attempt that ended (raising ``exc``); None: nothing to commit."""
        self._pacer.ended(run.id)
        if self._ended_by_timeout(run):
            self._outages.forget(run.id)
            return None  # the deadline watcher wrote the attempt's end
        if isinstance(exc, LeaseLost):
            self._lease_lost(run)
            return None
        if exc is not None:
            if not context.succeeded_in_transaction:
                if self._outages.may_give_back(run, exc):
                    self._give_back(run, exc)
                    return None
                return failure(run, self.jobs[run.job], exc)
            # The success is committed and cannot be taken back; say so loudly.
            log.warning(
                "job raised after ctx.transaction() committed its success; the run stays "
                "succeeded: %r",
                exc,
                extra={"run_id": run.id, "job": run.job, "attempt": run.attempt},
            )
        self._outages.forget(run.id)
        if context.succeeded_in_transaction:
            self._done((run, "succeeded"))
            return None
        return Outcome(
            kind=OutcomeKind.SUCCEEDED,
            lease=run.lease,
            attempt=run.attempt,
            children=context.children,
        )

    def _ended_by_timeout(self, run: ClaimedRun) -> bool:
        """Whether the deadline watcher ended this attempt (what the job did since is moot)."""
        watcher = self._deadlines
        if watcher is None or self.jobs[run.job].timeout is None:
            return False
        return watcher.done(run)

    def _give_back(self, run: ClaimedRun, exc: BaseException) -> None:
        """The store failed under the attempt: release the run, its attempt not counted."""
        released = self._outages.give_back(run, exc)
        if released is None:
            return  # shutting down: still held, released with the rest or left to its lease
        with self._changed:
            if released:
                self.report.released += 1
            else:  # no longer this worker's (outages.py logged why): counted as a lost lease
                self.report.lease_lost += 1
        self._forget(run)

    def _committer(self) -> None:
        while (batch := next_batch(self._outcomes)) is not None:
            accepted = self._commit(batch)
            ended = list(zip(batch, accepted, strict=True))
            self._done(*((run, outcome.kind.value) for (run, outcome), ok in ended if ok))
            for (run, _), ok in ended:
                if not ok:
                    self._lease_lost(run)
            self._forget(*(run for run, _ in batch))

    def _commit(self, batch: Sequence[tuple[ClaimedRun, Outcome]]) -> list[bool]:
        failures = 0
        while True:
            try:
                return self.store.finish(
                    [outcome for _, outcome in batch], worker_id=self.worker_id
                )
            except StoreError as exc:
                # The outcomes stay in memory and the leases stay renewed while
                # we retry; if the store stays away past the lease, the fenced
                # write refuses them and another worker redoes the runs.
                failures += 1
                delay = STORE_RETRY.delay(failures, self.worker_id)
                log.warning(
                    "recording %d outcomes failed, retrying in %.1fs: %s", len(batch), delay, exc
                )
                if self._abandon.wait(delay):
                    return [False] * len(batch)

    def _heartbeat(self) -> None:
        interval = self.lease_seconds / 3
        failures = 0
        # After a failed renewal, try again soon: once the store is back, the
        # leases must be renewed before they expire and cost their runs an attempt.
        while not self._closed.wait(
            min(interval, STORE_RETRY.delay(failures, self.worker_id)) if failures else interval
        ):
            with self._changed:
                held = list(self._held.values())
            try:
                lost = self.store.renew([h.run.lease for h in held], self.lease_seconds)
                self.store.worker_seen(self.worker_id, crashes=self._crashes())
                failures = 0
            except StoreError as exc:
                failures += 1
                log.warning("lease renewal failed: %s", exc)
                continue
            for h in held:
                if h.run.id in lost and h.context is not None:
                    h.context.mark_lease_lost()

    # -- bookkeeping ---------------------------------------------------------

    def _crashes(self) -> tuple[int, str | None] | None:
        """This process's background crashes since the worker started, for its store row."""
        count, recent = CRASHES.since(self._crash_mark)
        if not count:
            return None
        return count, str(recent[-1]) if recent else None

    def _waiting(self) -> int:
        """Claimed runs waiting for a job thread or a slot on the event loop."""
        return self._runnable.qsize() + self._event_loop.waiting()

    def _forget(self, *ended: ClaimedRun) -> None:
        """These claims have ended: the worker no longer holds their runs.

        Only these claims: a run released or retried at once may already have
        been claimed again, by the claim loop, before its previous claim was
        forgotten, and that new claim (another lease token) must stay held.
        """
        with self._changed:
            held = self._held
            room_before = self.capacity - len(held)
            for run in ended:
                holding = held.get(run.id)
                if holding is not None and holding.run.lease_token == run.lease_token:
                    del held[run.id]
            # Wake the claim loop only when it has something to do: room for a
            # batch has just opened, or nothing is held (idle, or draining).
            # Waking it after every run made it compete with the job threads
            # for the GIL on every run, for nothing.
            room = self.capacity - len(held)
            if not held or room_before < self._refill_at <= room:
                self._changed.notify_all()

    def _done(self, *ended: tuple[ClaimedRun, str]) -> None:
        counts = Counter(outcome for _, outcome in ended)  # a committed batch: one lock
        with self._changed:  # job threads and the committer both count
            self.report.count(counts)
        if self._on_outcome is not None:
            for run, outcome in ended:
                self._on_outcome(run, outcome)

    def _hung(self, run: ClaimedRun) -> None:
        with self._changed:
            others = [h.run.lease for h in self._held.values() if h.run.id != run.id]
        hung(self.store, self.worker_id, run, others, self.grace_seconds, self.exit_when_hung)

    def _timed_out(self, run: ClaimedRun, outcome: str) -> None:
        with self._changed:
            self.report.timed_out += 1
        self._done((run, outcome))

    def _lease_lost(self, run: ClaimedRun) -> None:
        with self._changed:
            self.report.lease_lost += 1
        log.warning(
            "lease lost (cancelled, timed out or taken over); nothing was committed here",
            extra={"run_id": run.id, "job": run.job, "attempt": run.attempt},
        )
        if self._on_outcome is not None:
            self._on_outcome(run, "lease_lost")
