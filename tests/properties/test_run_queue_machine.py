"""The run queue as a state machine: random interleavings checked against a model.

Hypothesis drives one store, SQLite or PostgreSQL, through random sequences
of what producers, workers and operators do — submit (duplicate keys, in a
transaction of the caller's, rolled back), claim by three workers with small
limits, heartbeat, a lease lapsing, success with an effect in the run's
transaction, success, a failed attempt (retry with backoff, or dead), reject,
checkpoint, release, cancel, retry by an operator, takeover of lapsed leases
— with the workers' stale leases used as often as current ones. After every
step:

* the store agrees with a model of the documented behaviour, run by run;
* one run per ``(job, run_key)``; at most one committed success and at most
  one effect row per run, the effect written by the attempt that succeeded;
* a write under a stale token is refused (``LeaseLost``, ``False`` from
  ``finish``, reported lost by ``renew``, not released) and changes nothing:
  rows, log and effects are the same before and after;
* lease tokens never go down, and a claim moves a run's token up; attempts
  go up by one per claim and only ever come down by a release (the attempt
  is given back) or an operator's retry (a fresh budget);
* the processing log only grows, and replays to the run's row
  (:mod:`tests.properties.replay`): status, attempt, token and holder.

When the example ends, the workers keep working until every run is
finished (succeeded, failed, dead or cancelled), and the same checks hold.

Time passes in two ways, both deterministic, since hypothesis must replay
every example identically to shrink a failure:

* A lease lapses the way it does when its worker stops renewing: the
  holder's last heartbeat asks for a lease of 1 ms (``renew`` with
  ``lease_seconds=0.001``), and the test waits until the *database* clock —
  the one claims compare expiry with — reads past it. Nothing is forged, so
  the expiry the store sees is one it computed itself, and once the wait is
  over the lease stays lapsed until someone acts. All other leases are an
  hour long and never lapse by themselves during a test.
* A retry waits either no time or an hour; an hour passes for one run when
  the test moves that run's ``available_at`` to the database's now through
  SQL (a simulated clock jump, in the adapter). A real backoff of a few
  milliseconds would make whether the next claim finds the run depend on
  the machine's speed.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import ferryman as fm
from ferryman.model import RunEventKind, RunStatus
from ferryman.store.records import to_json
from tests.properties import store_adapter as adapter
from tests.properties.profiles import bounded
from tests.properties.queue_model import (
    ENDINGS,
    FINISHED,
    KEYS,
    LAPSE,
    LONG_LEASE,
    QUEUED,
    RETRY_DELAYS,
    RUNNING,
    STALE_WRITES,
    TERMINAL,
    WORKERS,
    Held,
    ModelRun,
    Snapshot,
    check_progress,
    check_row,
)
from tests.properties.replay import replay
from tests.properties.texts import escaped, json_joins, short_texts

indexes = st.integers(min_value=0, max_value=1_000)
notes = short_texts(max_size=12)


class RunQueueMachine(RuleBasedStateMachine):
    store: ClassVar[adapter.Store]
    examples: ClassVar[Iterator[int]]

    def __init__(self) -> None:
        super().__init__()
        example = next(self.examples)
        # Each example works on jobs of its own in the test's store.
        self.jobs = (f"e{example}-load", f"e{example}-parse")
        self.runs: dict[int, ModelRun] = {}
        self.ids: dict[tuple[str, str], int] = {}
        self.held: list[Held] = []
        self.lapses = itertools.count()
        self.batches = itertools.count()
        self.last: Snapshot | None = None

    # -- helpers ---------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        runs = {run.id: run for job in self.jobs for run in self.store.get_runs(job=job)}
        return Snapshot(
            runs=runs,
            events={run_id: self.store.get_events(run_id) for run_id in runs},
            effects=adapter.effect_rows(self.store, self.jobs),
        )

    def is_current(self, held: Held) -> bool:
        run = self.runs[held.lease.run_id]
        return run.status is RUNNING and run.token == held.lease.token

    def current_leases(self, *, lapsed: bool | None = None) -> list[Held]:
        return [
            held
            for held in self.held
            if self.is_current(held)
            and (lapsed is None or (self.runs[held.lease.run_id].lapsed is not None) == lapsed)
        ]

    def stale_leases(self) -> list[Held]:
        return [held for held in self.held if not self.is_current(held)]

    @staticmethod
    def pick(pool: list[Held], index: int) -> Held:
        return pool[index % len(pool)]

    def holder(self, index: int) -> str:
        """One of the workers that got a lease."""
        workers = sorted({held.worker for held in self.held})
        return workers[index % len(workers)]

    def refused(self, write: Any, *, raises: type[Exception] | None = None) -> Any:
        """Make a write under a stale lease: it must be refused and change nothing."""
        before = self.snapshot()
        if raises is None:
            result = write()
        else:
            with pytest.raises(raises):
                write()
            result = None
        assert self.snapshot() == before, "a write under a stale lease changed the store"
        return result

    def outcome(self, held: Held, ending: str, delay: float, error: str) -> adapter.Outcome:
        """The outcome a worker records for ``ending``: a failed attempt retries until the last."""
        run = self.runs[held.lease.run_id]
        if ending == "succeeded":
            kind = adapter.OutcomeKind.SUCCEEDED
        elif ending == "rejected":
            kind = adapter.OutcomeKind.FAILED
        elif held.attempt < run.max_attempts:
            kind = adapter.OutcomeKind.RETRY
        else:
            kind = adapter.OutcomeKind.DEAD
        return adapter.Outcome(
            kind=kind,
            lease=held.lease,
            attempt=held.attempt,
            error=None if kind is adapter.OutcomeKind.SUCCEEDED else error,
            retry_delay=delay,
        )

    def apply_outcome(self, outcome: adapter.Outcome) -> None:
        run = self.runs[outcome.lease.run_id]
        run.owner, run.lapsed, run.error_is_prefix = None, None, False
        if outcome.kind is adapter.OutcomeKind.SUCCEEDED:
            run.status, run.last_error = RunStatus.SUCCEEDED, None
            return
        assert outcome.error is not None
        run.last_error = escaped(outcome.error)  # free text: NUL and surrogates escaped
        if outcome.kind is adapter.OutcomeKind.RETRY:
            run.status, run.due = QUEUED, outcome.retry_delay == 0
        else:
            kind = outcome.kind
            run.status = RunStatus.FAILED if kind is adapter.OutcomeKind.FAILED else RunStatus.DEAD

    def succeed_with_effect(self, held: Held) -> None:
        run = self.runs[held.lease.run_id]
        adapter.succeed_with_effect(
            self.store,
            held.lease,
            attempt=held.attempt,
            worker_id=held.worker,
            effect={
                "job": run.job,
                "run_key": run.run_key,
                "run_id": run.id,
                "lease_token": held.lease.token,
                "attempt": held.attempt,
            },
        )

    # -- producers ---------------------------------------------------------------

    @rule(
        job=st.sampled_from((0, 1)),
        keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4),
        max_attempts=st.integers(1, 3),
        how=st.sampled_from(("alone", "in_transaction", "rolled_back")),
    )
    def submit(self, job: int, keys: list[str], max_attempts: int, how: str) -> None:
        name, batch = self.jobs[job], next(self.batches)
        payloads = {key: {"key": key, "batch": batch} for key in keys}
        new_runs = [
            adapter.NewRun(
                job=name,
                run_key=key,
                payload_json=json.dumps(payloads[key]),
                max_attempts=max_attempts,
            )
            for key in keys
        ]
        if how == "rolled_back":
            before = self.snapshot()
            adapter.enqueue_then_roll_back(self.store, new_runs)
            assert self.snapshot() == before, "a rolled-back submit left something behind"
            return
        if how == "alone":
            result = self.store.enqueue(new_runs)
        else:
            with self.store.transaction() as conn:
                result = self.store.enqueue(new_runs, conn=conn)
        fresh = [key for key in dict.fromkeys(keys) if (name, key) not in self.ids]
        assert (result.created, result.deduplicated) == (len(fresh), len(keys) - len(fresh))
        assert len(result.run_ids) == len(keys)
        for key, run_id in zip(keys, result.run_ids, strict=True):
            known = self.ids.get((name, key))
            if known is not None:
                assert run_id == known, f"{key} got a second run"
                continue
            assert run_id not in self.runs
            self.ids[(name, key)] = run_id
            self.runs[run_id] = ModelRun(
                id=run_id,
                job=name,
                run_key=key,
                payload=payloads[key],
                max_attempts=max_attempts,
            )

    # -- workers -------------------------------------------------------------------

    @precondition(lambda self: self.runs)
    @rule(
        worker=st.sampled_from(WORKERS),
        limit=st.integers(1, 3),
        jobs=st.sampled_from(((0,), (1,), (0, 1))),
    )
    def claim(self, worker: str, limit: int, jobs: tuple[int, ...]) -> None:
        self.claim_and_check(worker, limit, jobs)

    def claim_and_check(
        self, worker: str, limit: int, jobs: tuple[int, ...]
    ) -> list[adapter.ClaimedRun]:
        names = [self.jobs[index] for index in jobs]
        claimed = self.store.claim(
            worker_id=worker, jobs=names, limit=limit, lease_seconds=LONG_LEASE
        )
        candidates = [run for run in self.runs.values() if run.job in names]
        lapsed = sorted(
            (run for run in candidates if run.status is RUNNING and run.lapsed is not None),
            key=lambda run: run.lapsed or 0,
        )[:limit]
        taken_over = {run.id for run in lapsed if run.attempt < run.max_attempts}
        due = {run.id for run in candidates if run.status is QUEUED and run.due}
        got = [run.id for run in claimed]
        assert len(set(got)) == len(got) <= limit
        assert taken_over <= set(got), "a lapsed lease was not taken over"
        from_queue = set(got) - taken_over
        assert from_queue <= due, "a run was claimed before it was due"
        assert len(from_queue) == min(limit - len(taken_over), len(due))
        for claim in claimed:
            run = self.runs[claim.id]
            assert (claim.job, claim.run_key, claim.max_attempts) == (
                run.job,
                run.run_key,
                run.max_attempts,
            )
            assert (claim.payload, claim.checkpoint) == (run.payload, run.checkpoint)
            assert (claim.attempt, claim.lease_token) == (run.attempt + 1, run.token + 1)
            run.status, run.owner, run.lapsed = RUNNING, worker, None
            run.attempt, run.token = claim.attempt, claim.lease_token
            self.held.append(Held(worker, claim.lease, claim.attempt))
        for run in lapsed:
            if run.id not in taken_over:  # its last attempt lapsed: dead, not claimed again
                run.status, run.owner, run.lapsed, run.token = (
                    RunStatus.DEAD,
                    None,
                    None,
                    run.token + 1,
                )
                run.last_error = f"lease expired on attempt {run.attempt} of {run.max_attempts}"
                run.error_is_prefix = True
        return claimed

    @precondition(lambda self: self.held)
    @rule(pick=indexes)
    def heartbeat(self, pick: int) -> None:
        worker = self.holder(pick)
        # A worker renews the newest lease it got on each run it holds.
        newest = {held.lease.run_id: held for held in self.held if held.worker == worker}
        lost = self.store.renew([held.lease for held in newest.values()], LONG_LEASE)
        assert lost == {run_id for run_id, held in newest.items() if not self.is_current(held)}
        for run_id, held in newest.items():
            if self.is_current(held):
                self.runs[run_id].lapsed = None

    @precondition(lambda self: self.current_leases(lapsed=False))
    @rule(pick=indexes)
    def lease_lapses(self, pick: int) -> None:
        held = self.pick(self.current_leases(lapsed=False), pick)
        assert self.store.renew([held.lease], LAPSE) == set()
        row = self.store.get_run(held.lease.run_id)
        assert row is not None and row.lease_expires_at is not None
        # A margin over the row's datetime, which is rounded to the microsecond.
        adapter.wait_for_clock_past(self.store, row.lease_expires_at.timestamp() + 0.001)
        self.runs[held.lease.run_id].lapsed = next(self.lapses)

    @precondition(lambda self: self.current_leases())
    @rule(pick=indexes)
    def succeed_in_transaction(self, pick: int) -> None:
        self.succeed_and_count(self.pick(self.current_leases(), pick))

    def succeed_and_count(self, held: Held) -> None:
        self.succeed_with_effect(held)
        run = self.runs[held.lease.run_id]
        run.status, run.owner, run.lapsed, run.last_error = RunStatus.SUCCEEDED, None, None, None
        run.error_is_prefix = False
        run.effects += 1

    @precondition(lambda self: self.current_leases())
    @rule(
        pick=indexes,
        ending=st.sampled_from(ENDINGS),
        delay=st.sampled_from(RETRY_DELAYS),
        error=notes,
    )
    def finish(self, pick: int, ending: str, delay: float, error: str) -> None:
        held = self.pick(self.current_leases(), pick)
        outcome = self.outcome(held, ending, delay, error)
        assert self.store.finish([outcome], worker_id=held.worker) == [True]
        self.apply_outcome(outcome)

    @precondition(lambda self: self.current_leases())
    @rule(pick=indexes, offset=st.integers(0, 100), note=notes)
    def checkpoint(self, pick: int, offset: int, note: str) -> None:
        held = self.pick(self.current_leases(), pick)
        data = {"offset": offset, "note": note}
        if json_joins(note):  # refused at the store's boundary, before anything is written
            with pytest.raises(fm.PayloadError, match="lone surrogates"):
                to_json(data, "checkpoint")
            return
        self.store.checkpoint(
            held.lease, attempt=held.attempt, worker_id=held.worker, data_json=to_json(data, "x")
        )
        self.runs[held.lease.run_id].checkpoint = data

    @precondition(lambda self: self.stale_leases())
    @rule(pick=indexes, write=st.sampled_from(STALE_WRITES), error=notes)
    def stale_write(self, pick: int, write: str, error: str) -> None:
        """A worker that lost its lease (paused, cut off, taken over) writes anyway."""
        held = self.pick(self.stale_leases(), pick)
        if write == "transaction":
            self.refused(lambda: self.succeed_with_effect(held), raises=fm.LeaseLost)
        elif write == "checkpoint":
            self.refused(
                lambda: self.store.checkpoint(
                    held.lease, attempt=held.attempt, worker_id=held.worker, data_json="{}"
                ),
                raises=fm.LeaseLost,
            )
        elif write == "heartbeat":
            lost = self.refused(lambda: self.store.renew([held.lease], LONG_LEASE))
            assert lost == {held.lease.run_id}
        elif write == "release":
            released = self.refused(
                lambda: self.store.release([held.lease], worker_id=held.worker, reason="late")
            )
            assert released == []
        else:
            outcome = self.outcome(held, write, RETRY_DELAYS[-1], error)
            accepted = self.refused(lambda: self.store.finish([outcome], worker_id=held.worker))
            assert accepted == [False]

    @precondition(lambda self: self.held)
    @rule(
        pick=indexes,
        endings=st.lists(st.sampled_from(ENDINGS), min_size=1, max_size=6),
        delay=st.sampled_from(RETRY_DELAYS),
        error=notes,
    )
    def finish_everything_held(
        self, pick: int, endings: list[str], delay: float, error: str
    ) -> None:
        """One group commit of outcomes for every lease the worker ever got, stale ones too."""
        worker = self.holder(pick)
        leases = [held for held in self.held if held.worker == worker]
        outcomes = [
            self.outcome(held, endings[n % len(endings)], delay, error)
            for n, held in enumerate(leases)
        ]
        expected = [self.is_current(held) for held in leases]
        accepted = self.store.finish(outcomes, worker_id=worker)
        assert accepted == expected, f"accepted {accepted}: only current leases may count"
        for outcome, current in zip(outcomes, expected, strict=True):
            if current:
                self.apply_outcome(outcome)

    @precondition(lambda self: self.held)
    @rule(pick=indexes)
    def release(self, pick: int) -> None:
        """A worker stopping gives back every lease it got (stale ones are refused)."""
        worker = self.holder(pick)
        leases = [held for held in self.held if held.worker == worker]
        current = {held.lease.run_id for held in leases if self.is_current(held)}
        released = self.store.release(
            [held.lease for held in leases], worker_id=worker, reason="stopping"
        )
        assert sorted(released) == sorted(current)
        for run_id in current:
            run = self.runs[run_id]
            run.status, run.owner, run.lapsed = QUEUED, None, None
            run.attempt, run.token, run.due = run.attempt - 1, run.token + 1, True

    def waiting(self) -> list[ModelRun]:
        return [run for run in self.runs.values() if run.status is QUEUED and not run.due]

    @precondition(lambda self: self.waiting())
    @rule(pick=indexes)
    def backoff_passes(self, pick: int) -> None:
        waiting = self.waiting()
        self.backoff_passes_for(waiting[pick % len(waiting)])

    def backoff_passes_for(self, run: ModelRun) -> None:
        adapter.let_backoff_pass(self.store, run.id)
        run.due = True

    # -- operators -------------------------------------------------------------------

    @precondition(lambda self: self.runs)
    @rule(index=indexes)
    def cancel(self, index: int) -> None:
        run = list(self.runs.values())[index % len(self.runs)]
        # Queued and running runs are cancelled, their token bumped (a running
        # run's lease is revoked with it).
        cancelled = self.store.cancel(run.id, by="operator")
        assert (cancelled is not None) is (run.status in (QUEUED, RUNNING))
        if cancelled is not None:
            assert cancelled.status is RunStatus.CANCELLED
            run.token += 1
            run.status, run.owner, run.lapsed = RunStatus.CANCELLED, None, None

    @precondition(lambda self: self.runs)
    @rule(picks=st.lists(indexes, min_size=1, max_size=4), by_job=st.sampled_from((None, 0, 1)))
    def retry(self, picks: list[int], by_job: int | None) -> None:
        if by_job is None:
            chosen = {list(self.runs)[pick % len(self.runs)] for pick in picks}
            requeued = self.store.requeue(run_ids=sorted(chosen), by="operator")
        else:
            chosen = {run.id for run in self.runs.values() if run.job == self.jobs[by_job]}
            requeued = self.store.requeue(job=self.jobs[by_job], by="operator")
        expected = {run_id for run_id in chosen if self.runs[run_id].status in FINISHED}
        assert sorted(requeued) == sorted(expected)
        for run_id in expected:
            run = self.runs[run_id]
            run.status, run.attempt, run.due = QUEUED, 0, True

    # -- after every step ------------------------------------------------------------

    @invariant()
    def store_keeps_its_promises(self) -> None:
        snapshot = self.snapshot()
        assert set(snapshot.runs) == set(self.runs)
        pairs = [(run.job, run.run_key) for run in snapshot.runs.values()]
        assert len(set(pairs)) == len(pairs), "two runs for one (job, run_key)"
        effects: dict[int, list[dict[str, Any]]] = {}
        for effect in snapshot.effects:
            effects.setdefault(effect["run_id"], []).append(effect)
        for run_id, row in snapshot.runs.items():
            model = self.runs[run_id]
            check_row(row, model)
            events = snapshot.events[run_id]
            replayed = replay(events)
            assert (replayed.status, replayed.attempt, replayed.lease_token) == (
                row.status,
                row.attempt,
                row.lease_token,
            ), "the processing log does not replay to the run's row"
            assert replayed.holder == row.lease_owner
            assert replayed.successes <= 1, "a run succeeded twice"
            written = effects.get(run_id, [])
            assert len(written) == model.effects <= 1, "an effect was applied twice"
            if written:  # written by the attempt that succeeded, under its lease
                (success,) = [e for e in events if e.kind is RunEventKind.SUCCEEDED]
                assert (written[0]["lease_token"], written[0]["attempt"]) == (
                    success.lease_token,
                    success.attempt,
                )
        if self.last is not None:
            for run_id, old in self.last.runs.items():
                check_progress(old, snapshot.runs[run_id], self.last.events[run_id], snapshot)
        self.last = snapshot

    # -- when the example ends -----------------------------------------------------------

    def teardown(self) -> None:
        """Workers keep working until every run is finished; the checks hold throughout."""
        if sys.exc_info()[0] is not None:
            return  # the example failed already: report that, not its aftermath
        for _ in range(100):
            if all(run.status in TERMINAL for run in self.runs.values()):
                break
            for held in list(self.held):
                if self.is_current(held) and self.runs[held.lease.run_id].lapsed is None:
                    self.succeed_and_count(held)
            for run in self.waiting():
                self.backoff_passes_for(run)
            self.claim_and_check(WORKERS[0], 3, (0, 1))
            self.store_keeps_its_promises()
        unfinished = [run for run in self.runs.values() if run.status not in TERMINAL]
        assert unfinished == [], "runs left unfinished while workers kept working"
        self.store_keeps_its_promises()


@pytest.fixture
def queue_store(store_url: str) -> Iterator[adapter.Store]:
    store = adapter.Store(store_url)
    adapter.create_effects_table(store)
    yield store
    store.close()


def test_the_run_queue_keeps_its_promises_in_any_interleaving(
    queue_store: adapter.Store,
) -> None:
    machine = type(
        "RunQueue", (RunQueueMachine,), {"store": queue_store, "examples": itertools.count()}
    )
    run_state_machine_as_test(machine, settings=bounded(25))


def test_a_stale_outcome_batched_with_the_current_one_is_refused(
    queue_store: adapter.Store,
) -> None:
    """A worker that took its own lapsed run over commits both attempts' outcomes at once."""
    store = queue_store
    (run_id,) = store.enqueue(
        [adapter.NewRun(job="load", run_key="r", payload_json="{}", max_attempts=3)]
    ).run_ids
    (first,) = store.claim(worker_id="w", jobs=["load"], limit=1, lease_seconds=LONG_LEASE)
    assert store.renew([first.lease], LAPSE) == set()
    row = store.get_run(run_id)
    assert row is not None and row.lease_expires_at is not None
    adapter.wait_for_clock_past(store, row.lease_expires_at.timestamp() + 0.001)
    (second,) = store.claim(worker_id="w", jobs=["load"], limit=1, lease_seconds=LONG_LEASE)
    assert second.lease_token == first.lease_token + 1

    succeeded = adapter.OutcomeKind.SUCCEEDED
    accepted = store.finish(
        [
            adapter.Outcome(kind=succeeded, lease=first.lease, attempt=first.attempt),
            adapter.Outcome(kind=succeeded, lease=second.lease, attempt=second.attempt),
        ],
        worker_id="w",
    )
    assert accepted == [False, True]
    successes = [e for e in store.get_events(run_id) if e.kind is RunEventKind.SUCCEEDED]
    assert [(e.lease_token, e.attempt) for e in successes] == [(2, 2)]
