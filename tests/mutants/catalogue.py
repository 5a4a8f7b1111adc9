"""The mutations: for each promise of docs/guarantees.md, the code that keeps it, broken.

Each :class:`Mutation` names the promise (a heading of docs/guarantees.md), the
exact snippet of ``src/ferryman`` that keeps it, what to put in its place, and
the tests that must fail once it is replaced. A snippet must occur exactly once
in its file: ``tests/mutants/test_catalogue.py`` checks that in the normal
suite, so a refactoring that moves or rewrites the code fails there and asks
for the snippet to be updated, instead of silently turning a mutation into a
no-op.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "src"
GUARANTEES = REPO / "docs" / "guarantees.md"

# Headings of docs/guarantees.md that introduce or sum up promises made under
# other headings, or say what is *not* promised: no mutation of their own.
NOT_PROMISES = frozenset(
    {
        "Guarantees",
        "Summary",
        "The long storm (`make soak`)",
        "What is not promised",
        "Sensors",
        "What sensors do not promise",
        "S3 transfers",
        "What transfers do not promise",
        "The mutation check (`make mutants`)",
    }
)


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace ``original`` (found exactly once in ``path``, under src/) by ``replacement``."""

    path: str
    original: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Mutation:
    name: str
    promise: str  # a heading of docs/guarantees.md
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # pytest node ids, the quickest to fail first
    timeout: float = 300.0  # per test (pytest-timeout): a mutation may make a test hang


def promises(text: str | None = None) -> list[str]:
    """The headings of docs/guarantees.md that make promises."""
    text = GUARANTEES.read_text() if text is None else text
    headings = re.findall(r"^#{1,3} (.+?)\s*$", text, flags=re.MULTILINE)
    return [heading for heading in headings if heading not in NOT_PROMISES]


def one(path: str, original: str, replacement: str) -> tuple[Edit, ...]:
    """A mutation of one edit."""
    return (Edit(path, original, replacement),)


DIALECT = "ferryman/store/dialect.py"
LEASES = "ferryman/store/leases.py"
RUN_ROWS = "ferryman/store/run_rows.py"
SQLITE = "ferryman/store/sqlite.py"
POSTGRES = "ferryman/store/postgres.py"
POSTGRES_ENQUEUE = "ferryman/store/postgres_enqueue.py"
POSTGRES_LEASES = "ferryman/store/postgres_leases.py"
MARIADB = "ferryman/store/mariadb.py"
SENSORS = "ferryman/store/sensors.py"
RUN_TALLY = "ferryman/store/run_tally.py"
# The due runs of a limited job read whatever runs of their key are running.
# The due runs' filter by their key's running runs, both ways: the keys with
# key_concurrency runs running (2 and more) and any running key (1, the default).
KEY_RUNNING_IGNORED = (
    Edit(
        "ferryman/store/limits.py",
        '        .having(sa.func.count() >= sa.bindparam("key_concurrency"))\n',
        '        .having(sa.bindparam("key_concurrency") < 0)\n',
    ),
    Edit(
        "ferryman/store/limits.py",
        "        return running_keys, running_keys\n",
        "        return running_keys, running_keys.where(sa.false())\n",
    ),
)

CONTRACT = "tests/unit/test_runs_contract.py"
POLL = "tests/unit/test_sensors_poll.py"
PUSH = "tests/unit/test_sensors_push.py"
FAULTS = "tests/unit/test_worker_faults.py"
RESUME = "tests/transfer/test_resume_and_changes.py"
TALLY = "tests/unit/test_run_tally.py"

ONE_RUN = "Exactly once: one run per run_key"
IN_TRANSACTION = "Exactly once: effects through `ctx.transaction()`"
PAUSED = "A paused worker cannot commit"
SIGTERM = "SIGTERM gives back what it cannot finish"
PUSH_PROMISE = "Push: one evaluation per message"
RUN_CONTROL = "tests/unit/test_run_control.py"
QUEUE = "tests/unit/test_queue_controls.py"
ASYNC_TIMEOUTS = "tests/unit/test_async_timeouts.py"
DEADLOCKS = "tests/integration/test_deadlock_victims.py"
LOCK_ORDER = "tests/integration/test_lock_order.py"
TIMEOUTS = "Timeouts: an attempt past its deadline ends and cannot commit"
CANCELLING = "Cancelling: nothing a cancelled run does afterwards commits"
CHAINING = "Chaining: a downstream run exists if and only if its upstream succeeded"
RUN_COUNTS = "Run counts are exact without counting every run"
WORKER_VIEWS = "Worker views: exact, or saying they are not"

MUTATIONS: tuple[Mutation, ...] = (
    # -- runs: one run per run_key -----------------------------------------------
    Mutation(
        "enqueue without ON CONFLICT (SQLite)",
        ONE_RUN,
        one(SQLITE, '    "ON CONFLICT (key_digest) DO NOTHING"\n', '    ""\n'),
        (f"{CONTRACT}::test_duplicate_run_keys_yield_one_run[sqlite]",),
    ),
    Mutation(
        "a submit that loses a deadlock raises instead of being tried again",
        ONE_RUN,
        one(
            DIALECT,
            "            if tries >= CONTENDED_TRIES or orig is None "
            "or not backend.contended(orig):\n",
            "            if True:\n",
        ),
        (f"{DEADLOCKS}::test_a_submit_that_loses_a_deadlock_is_tried_again",),
    ),
    Mutation(
        "a batch's key digests cut one run along (SQLite)",
        ONE_RUN,
        one(
            "ferryman/store/sqlite_batch.py",
            '    "key_digest": f"substr(:key_digests, {DIGEST_BYTES} * batch.key + 1, '
            '{DIGEST_BYTES})",\n',
            '    "key_digest": f"substr(:key_digests, {DIGEST_BYTES} * batch.key + 33, '
            '{DIGEST_BYTES})",\n',
        ),
        (
            f"{CONTRACT}::"
            "test_a_batch_due_at_once_stores_every_value_exactly_and_names_each_run[sqlite]",
        ),
    ),
    Mutation(
        "enqueue without ON CONFLICT (PostgreSQL)",
        ONE_RUN,
        one(
            POSTGRES_ENQUEUE,
            "        ORDER BY input.position\n        ON CONFLICT (key_digest) DO NOTHING\n",
            "        ORDER BY input.position\n",
        ),
        (f"{CONTRACT}::test_duplicate_run_keys_yield_one_run[postgres]",),
    ),
    Mutation(
        "a batch that meets an existing key is not written again with ON CONFLICT (PostgreSQL)",
        ONE_RUN,
        one(POSTGRES, "if _constraint(exc) != KEY_DIGEST_UNIQUE:", "if True:"),
        (
            "tests/unit/test_batched_submits.py::"
            "test_batches_repeating_some_keys_create_only_the_new_ones[postgres]",
        ),
    ),
    Mutation(
        "a shared submit statement's failure raised to its first submitter only",
        ONE_RUN,
        one(
            "ferryman/store/shared_submits.py",
            "            for submit in group:\n                submit.error = exc\n",
            "            for submit in group[:1]:\n                submit.error = exc\n",
        ),
        (
            "tests/unit/test_concurrent_submits.py::"
            "test_a_failed_shared_statement_fails_each_of_its_submitters[postgres]",
            "tests/unit/test_concurrent_submits.py::"
            "test_a_failed_shared_statement_fails_each_of_its_submitters[sqlite]",
        ),
    ),
    # -- effects through ctx.transaction() ----------------------------------------
    Mutation(
        "success write without the lease-token predicate (PostgreSQL)",
        IN_TRANSACTION,
        one(
            POSTGRES_LEASES,
            "WHERE r.id = %(run_id)s AND r.lease_token = %(token)s AND r.status = 'running'",
            "WHERE r.id = %(run_id)s AND r.status = 'running'",
        ),
        (f"{CONTRACT}::test_lost_lease_refuses_every_fenced_write[postgres]",),
    ),
    Mutation(
        "success written in a transaction of its own, after the effect",
        IN_TRANSACTION,
        one(
            "ferryman/worker/context.py",
            "            yield conn\n            self._run_store.succeed_within(",
            "            yield conn\n"
            "        with self._run_store.transaction() as conn:\n"
            "            self._run_store.succeed_within(",
        ),
        (f"{CONTRACT}::test_lost_lease_refuses_every_fenced_write",),
    ),
    Mutation(
        "group commit acknowledged before it is durable",
        IN_TRANSACTION,
        one(
            "ferryman/store/group_commit.py",
            "        self._end_turn()\n        group.committed.wait()\n",
            "        self._end_turn()\n",
        ),
        (
            "tests/unit/test_sqlite_group_commit.py::"
            "test_a_shared_commit_that_fails_fails_every_writer_in_it_and_keeps_nothing",
            "tests/unit/test_sqlite_group_commit.py::"
            "test_writers_that_queue_share_one_commit_and_each_keeps_all_or_nothing",
        ),
    ),
    Mutation(
        "BlockGuard leaves a block's open results open",
        IN_TRANSACTION,
        one(
            "ferryman/store/blocks.py",
            "                    cursor.close()\n",
            "                    pass\n",
        ),
        (
            "tests/unit/test_transaction_blocks.py::"
            "test_a_result_left_open_in_one_block_does_not_fail_the_other_runs[sqlite]",
        ),
        timeout=60,  # the other runs' commits fail and the test waits for them
    ),
    Mutation(
        "BlockGuard lets a block commit its own transaction",
        IN_TRANSACTION,
        one(
            "ferryman/store/blocks.py",
            "    def _on_commit(self, conn: sa.Connection) -> None:\n"
            '        self._refuse(conn, "conn.commit()")\n',
            "    def _on_commit(self, conn: sa.Connection) -> None:\n        pass\n",
        ),
        (
            "tests/unit/test_transaction_blocks.py::"
            "test_a_block_that_ends_its_own_transaction_is_refused_and_applies_nothing",
        ),
    ),
    # -- at least once -----------------------------------------------------------
    Mutation(
        "checkpoint not handed to the next attempt",
        "At least once: effects outside the store",
        one(
            "ferryman/worker/context.py",
            "        self._last_checkpoint = run.checkpoint\n",
            "        self._last_checkpoint = None\n",
        ),
        (f"{CONTRACT}::test_checkpoint_is_handed_to_the_next_attempt",),
    ),
    # -- leases ------------------------------------------------------------------
    Mutation(
        "claim takes over live leases and leaves expired ones (SQLite)",
        "Nothing is lost when a worker dies",
        one(
            SQLITE,
            '        runs.c.lease_expires_at < sa.bindparam("now"),\n',
            '        runs.c.lease_expires_at > sa.bindparam("now"),\n',
        ),
        (
            f"{CONTRACT}::test_heartbeats_keep_a_long_job_owned[sqlite]",
            f"{CONTRACT}::test_lost_lease_refuses_every_fenced_write[sqlite]",
        ),
    ),
    Mutation(
        "claim never takes an expired lease over (PostgreSQL)",
        "Nothing is lost when a worker dies",
        one(
            DIALECT,
            '                runs.c.lease_expires_at < sa.bindparam("now"),\n',
            '                runs.c.lease_expires_at < sa.bindparam("now") - 1e12,\n',
        ),
        (f"{CONTRACT}::test_lost_lease_refuses_every_fenced_write[postgres]",),
    ),
    Mutation(
        "expired leases taken over lowest id first, not oldest expiry (MariaDB)",
        "Nothing is lost when a worker dies",
        one(
            MARIADB,
            "candidates = list(conn.execute(self._expired_candidates, params).scalars())",
            "candidates = sorted(conn.execute(self._expired_candidates, params).scalars())",
        ),
        (f"{CONTRACT}::test_lapsed_leases_are_taken_over_oldest_expiry_first[mariadb]",),
    ),
    Mutation(
        "the one-statement claim goes on past expired leases (PostgreSQL)",
        "Nothing is lost when a worker dies",
        one(POSTGRES, "        if expired or limited:\n", "        if limited:\n"),
        (f"{CONTRACT}::test_lost_lease_refuses_every_fenced_write[postgres]",),
    ),
    Mutation(
        "outcome writes without the lease-token predicate (SQLite)",
        PAUSED,
        one(SQLITE, '    runs.c.lease_token == sa.bindparam("token"),\n', ""),
        (
            f"{CONTRACT}::test_lost_lease_refuses_every_fenced_write[sqlite]",
            "tests/crash/test_zombie.py::"
            "test_paused_worker_cannot_commit_after_its_run_was_taken_over[sqlite]",
        ),
    ),
    Mutation(
        "outcome writes without the lease-token predicate (PostgreSQL)",
        PAUSED,
        one(
            POSTGRES_LEASES,
            "WHERE run.lease_token = lease.token AND run.status = 'running'",
            "WHERE run.status = 'running'",
        ),
        (f"{FAULTS}::test_an_outcome_is_counted_only_once_it_is_committed[postgres]",),
    ),
    Mutation(
        "a batch with failures written without the lease-token predicate (PostgreSQL)",
        PAUSED,
        one(
            POSTGRES_LEASES,
            "WHERE run.lease_token = ending.token AND run.status = 'running'",
            "WHERE run.status = 'running'",
        ),
        (
            f"{CONTRACT}::"
            "test_a_batch_of_outcomes_writes_only_those_under_the_current_lease[postgres]",
        ),
    ),
    Mutation(
        "a batch of outcomes kept without comparing lease tokens (MariaDB)",
        PAUSED,
        one(
            MARIADB,
            "held = {Lease(row.id, row.lease_token) for row in rows}",
            "held = {outcome.lease for outcome in outcomes}",
        ),
        (
            f"{CONTRACT}::"
            "test_a_batch_of_outcomes_writes_only_those_under_the_current_lease[mariadb]",
        ),
    ),
    Mutation(
        "checkpoint not fenced",
        PAUSED,
        one(
            LEASES,
            "fenced_update([lease]).values(checkpoint=checkpoint_json",
            "runs.update().where(runs.c.id == lease.run_id).values(checkpoint=checkpoint_json",
        ),
        (f"{CONTRACT}::test_lost_lease_refuses_every_fenced_write",),
    ),
    Mutation(
        "heartbeat renews without the token check",
        PAUSED,
        one(
            LEASES,
            "fenced_update(chunk)",
            "runs.update().where(runs.c.id.in_([lease.run_id for lease in chunk]))",
        ),
        (f"{CONTRACT}::test_lost_lease_refuses_every_fenced_write",),
    ),
    Mutation(
        "claims without SKIP LOCKED (PostgreSQL)",
        "Crash points, one by one",
        one(POSTGRES_LEASES, "            FOR UPDATE SKIP LOCKED\n", ""),
        (
            "tests/integration/test_claim_contention.py::"
            "test_a_claim_passes_over_the_runs_another_claim_has_locked",
            "tests/integration/test_claim_contention.py::test_no_run_is_executed_by_two_workers",
        ),
    ),
    # -- SQLite's write lock -------------------------------------------------------
    Mutation(
        "writer waits for the write lock for ever",
        "What SQLite cannot fence: a paused process holding the write lock",
        one(
            "ferryman/store/group_commit.py",
            "        if not waiter.wait(self.timeout):\n",
            "        if not waiter.wait(None):\n",
        ),
        (
            "tests/unit/test_sqlite_paused_writer.py::"
            "test_a_writer_gives_up_after_the_busy_timeout_naming_the_lock",
        ),
        timeout=60,
    ),
    # -- outcomes ------------------------------------------------------------------
    Mutation(
        "outcome counted before its commit",
        "Outcomes are durable before they are counted",
        (
            Edit(
                "ferryman/worker/worker.py",
                "        else:\n            self._outcomes.put((run, outcome))\n",
                "        else:\n"
                "            self._done((run, outcome.kind.value))\n"
                "            self._outcomes.put((run, outcome))\n",
            ),
            Edit(
                "ferryman/worker/worker.py",
                "            self._done(*((run, outcome.kind.value) for (run, outcome), ok "
                "in ended if ok))\n",
                "",
            ),
        ),
        (f"{FAULTS}::test_an_outcome_is_counted_only_once_it_is_committed",),
    ),
    # -- start-up ------------------------------------------------------------------
    Mutation(
        "start-up gives up at the first unreachable store",
        "A store that is away at start is waited for",
        one(
            "ferryman/store/__init__.py",
            "        except StoreUnavailable as exc:\n            tries += 1\n",
            "        except StoreUnavailable as exc:\n            raise exc\n",
        ),
        (
            "tests/integration/test_store_startup.py::"
            "test_work_and_run_wait_for_a_database_that_comes_up_later",
        ),
    ),
    # -- full disk -----------------------------------------------------------------
    Mutation(
        "a full SQLite disk counts as the job's failure",
        "A full disk (SQLite)",
        one(
            SQLITE,
            "SQLITE_FAILURES = frozenset({5, 6, 7, 10, 13, 14, 15})",
            "SQLITE_FAILURES = frozenset({5, 6, 7, 10, 14, 15})",
        ),
        (
            f"{FAULTS}::test_a_store_failing_under_the_transaction_uses_no_attempt[sqlite]",
            "tests/faults/test_sqlite_full_disk.py::"
            "test_a_full_disk_fails_writes_clearly_and_the_same_worker_carries_on",
        ),
    ),
    # -- SIGTERM -------------------------------------------------------------------
    Mutation(
        "release without bumping the token",
        SIGTERM,
        one(
            LEASES,
            "            lease_token=runs.c.lease_token + 1,\n            available_at=now,\n",
            "            available_at=now,\n",
        ),
        (f"{CONTRACT}::test_stop_releases_unfinished_runs_without_using_an_attempt",),
    ),
    Mutation(
        "release uses up the attempt",
        SIGTERM,
        one(
            LEASES,
            "            status=RunStatus.QUEUED.value,\n            attempt=runs.c.attempt - 1,\n",
            "            status=RunStatus.QUEUED.value,\n",
        ),
        (f"{CONTRACT}::test_stop_releases_unfinished_runs_without_using_an_attempt",),
    ),
    # -- a job that kills its worker -------------------------------------------------
    Mutation(
        "lease expiry on the last attempt claims the run again",
        "A job that kills its worker cannot loop",
        one(
            LEASES,
            "            if row.attempt < row.max_attempts:\n",
            "            if row.attempt <= row.max_attempts:\n",
        ),
        (f"{CONTRACT}::test_lease_expiry_on_the_last_attempt_is_dead",),
    ),
    Mutation(
        "a crashed worker hands back the runs it had started",
        "A job that kills its worker cannot loop",
        one(
            "ferryman/worker/worker.py",
            "            crashed = self._crash is not None\n",
            "            crashed = False\n",
        ),
        (f"{FAULTS}::test_a_crashed_worker_leaves_started_runs_to_their_leases",),
    ),
    # -- failures ----------------------------------------------------------------
    Mutation(
        "a BaseException from a job crashes the worker",
        "Failures, retries and rejected input",
        one(
            "ferryman/worker/worker.py",
            "        except BaseException as exc:\n"
            "            return self._settle(run, context, exc)\n",
            "        except Exception as exc:\n"
            "            return self._settle(run, context, exc)\n",
        ),
        (f"{FAULTS}::test_a_job_raising_a_base_exception_fails_its_attempt",),
    ),
    Mutation(
        "a rejected run retried",
        "Failures, retries and rejected input",
        one(
            "ferryman/worker/outcomes.py",
            "    if isinstance(exc, Reject):\n",
            "    if False:\n",
        ),
        (f"{CONTRACT}::test_reject_fails_at_once_and_keeps_the_reason",),
    ),
    Mutation(
        "a retry due at once, without its backoff",
        "Failures, retries and rejected input",
        one(
            RUN_ROWS,
            '            "available_at": now + outcome.retry_delay,\n',
            '            "available_at": now,\n',
        ),
        (f"{CONTRACT}::test_retry_delays_are_deterministic",),
    ),
    Mutation(
        "the store failing under an attempt counts it",
        "A store outage uses no attempt",
        one(
            "ferryman/worker/outages.py",
            "        if not caused_by_store(exc):\n",
            "        if True:\n",
        ),
        (f"{FAULTS}::test_a_store_failing_under_the_transaction_uses_no_attempt",),
    ),
    # -- sensors -----------------------------------------------------------------
    Mutation(
        "poll cursor committed before the runs",
        "A poll evaluation commits all of its result, or nothing",
        one(
            "ferryman/store/__init__.py",
            '        with self.write("committing a sensor evaluation") as conn:\n'
            "            return self.sensors.commit_poll(conn, commit)\n",
            '        with self.write("committing a sensor evaluation") as conn:\n'
            "            evaluation = self.sensors.commit_poll(\n"
            '                conn, __import__("dataclasses").replace(commit, new_runs=())\n'
            "            )\n"
            "        self.enqueue(commit.new_runs)\n"
            "        return evaluation\n",
        ),
        (f"{POLL}::test_a_commit_the_store_refuses_leaves_the_cursor_and_writes_no_run",),
    ),
    Mutation(
        "cursor swap without the CAS on state_version",
        "Concurrent evaluators: one wins, the others record a conflict",
        one(
            SENSORS,
            "            .where(sensors.c.name == name, "
            "sensors.c.state_version == state_version)\n",
            "            .where(sensors.c.name == name)\n",
        ),
        (f"{POLL}::test_lost_race_records_conflict_and_writes_nothing_else",),
    ),
    Mutation(
        "a failed evaluation is due again at once",
        "A failing sensor keeps its cursor and backs off deterministically",
        one(
            SENSORS,
            "            consecutive_failures=failure.failures,\n"
            "            next_evaluation_at=now + failure.next_delay,\n",
            "            consecutive_failures=failure.failures,\n"
            "            next_evaluation_at=now,\n",
        ),
        (f"{POLL}::test_failure_backoff_is_deterministic_and_resets_on_success",),
    ),
    Mutation(
        "push deduplicated by message id only, whatever the sensor",
        PUSH_PROMISE,
        one(
            SENSORS,
            "                    push_deliveries.c.sensor == sensor,\n"
            "                    push_deliveries.c.message_digest == message_digest(message_id),\n",
            "                    push_deliveries.c.message_digest == message_digest(message_id),\n",
        ),
        (f"{PUSH}::test_message_ids_are_compared_per_sensor_not_as_one_string",),
    ),
    Mutation(
        "push deliveries kept past their retention",
        PUSH_PROMISE,
        one(
            "ferryman/sensors/engine.py",
            "        forgotten = self.store.prune_deliveries(self.delivery_retention)\n",
            "        forgotten = 0\n",
        ),
        (f"{PUSH}::test_deliveries_are_forgotten_after_the_retention_window",),
    ),
    Mutation(
        "a remembered delivery's evaluation pruned with the history",
        PUSH_PROMISE,
        one(SENSORS, "                    ~delivered,\n", ""),
        (f"{PUSH}::test_a_redelivery_is_recognised_after_its_evaluation_history_was_pruned",),
    ),
    Mutation(
        "free text stored without escaping",
        "Keys and texts",
        one(
            "ferryman/store/records.py",
            "    if _UNSTORABLE.search(text) is None:\n        return text\n",
            "    if True:\n        return text\n",
        ),
        (f"{CONTRACT}::test_texts_with_lone_surrogates_are_stored_and_never_stop_the_worker",),
    ),
    Mutation(
        "a run_key the store cannot hold passed on to it",
        "Keys and texts",
        one(
            RUN_ROWS,
            '        records.checked_key(self.run_key, f"run_key of job {self.job!r}")\n',
            "",
        ),
        (f"{CONTRACT}::test_a_run_key_that_cannot_be_stored_is_refused_naming_it",),
    ),
    Mutation(
        "a batch's run_keys passed on to the store unchecked",
        "Keys and texts",
        one(
            "ferryman/jobs.py",
            "        if not storable_keys(run_keys) or not storable_keys(concurrency_keys):\n",
            "        if False:\n",
        ),
        (f"{CONTRACT}::test_a_run_key_that_cannot_be_stored_is_refused_naming_it",),
    ),
    Mutation(
        "one bad item fails the whole evaluation",
        "Keys and texts",
        one(
            "ferryman/sensors/engine.py",
            "            except PayloadError as exc:\n",
            "            except ZeroDivisionError as exc:\n",
        ),
        (f"{POLL}::test_a_bad_item_is_skipped_with_its_reason_and_the_others_go_on",),
    ),
    Mutation(
        "set-cursor commits a cursor the built-in sensor cannot read",
        "Operators change state through the same swap",
        one(
            "ferryman/sensors/engine.py",
            "        if value is not None and check is not None:\n",
            "        if False:\n",
        ),
        (
            "tests/unit/test_cli_set_cursor.py::test_a_builtin_sensor_refuses_a_cursor_it_cannot_read",
        ),
    ),
    Mutation(
        "the watermark cursor's floor at the watermark itself",
        "Built-in sensors: what each cursor guarantees, and under which assumption",
        one(
            "ferryman/sensors/builtin/watermark.py",
            "        floor = self.watermark - max(window, 1)\n",
            "        floor = self.watermark\n",
        ),
        (
            "tests/unit/test_builtin_cursors.py::"
            "test_an_item_with_the_watermarks_timestamp_is_still_new",
        ),
    ),
    # -- transfers -----------------------------------------------------------------
    Mutation(
        "a part counted before its row commits",
        "A part counts once S3 acknowledged it *and* its row committed",
        one(
            "ferryman/transfer/sender.py",
            "            self._commit(confirmed)\n            self.counter.count(size)\n",
            "            self.counter.count(size)\n            self._commit(confirmed)\n",
        ),
        (f"{RESUME}::test_resume_sends_only_what_is_missing_and_adopts_parts_s3_has[sqlite]",),
    ),
    Mutation(
        "a part's buffer read into again while S3 is still receiving it",
        "A part counts once S3 acknowledged it *and* its row committed",
        one(
            "ferryman/transfer/sender.py",
            "            checksum = Checksum.of(self.algorithm, part.data)\n",
            "            checksum = Checksum.of(self.algorithm, part.data)\n"
            "            give_back()\n",
        ),
        (
            "tests/transfer/test_upload_moto.py::"
            "test_more_parts_than_buffers_each_part_holds_its_own_bytes[3]",
        ),
    ),
    Mutation(
        "a part's buffer read into again before the file's digest hashed it",
        "Complete, then verify, then report",
        one(
            "ferryman/transfer/reader.py",
            "            part.hold()\n            self._waiting.append(part)\n",
            "            self._waiting.append(part)\n",
        ),
        (
            "tests/unit/test_part_reader.py::"
            "test_the_file_digest_hashes_each_buffer_before_it_is_read_into_again",
        ),
    ),
    Mutation(
        "resume without ListParts: the store taken for the truth",
        "On resume, S3 is the truth and the file is checked",
        one(
            "ferryman/transfer/resume.py",
            "        on_s3 = list_parts(target, upload_id)\n",
            "        on_s3 = {\n"
            "            p.part_number: ListedPart(size=p.size, etag=p.etag, sha256=p.sha256)\n"
            "            for p in stored\n"
            "        }\n",
        ),
        (f"{RESUME}::test_resume_sends_only_what_is_missing_and_adopts_parts_s3_has[sqlite]",),
    ),
    Mutation(
        "confirmed parts not re-read on resume",
        "On resume, S3 is the truth and the file is checked",
        one(
            "ferryman/transfer/upload.py",
            "        if len(data) != part.size or Checksum.of(sent.algorithm, data) != sent:\n",
            "        if len(data) != part.size:\n",
        ),
        (f"{RESUME}::test_a_source_changed_between_runs_fails_and_aborts[sqlite-modified]",),
    ),
    Mutation(
        "the parts' CRC32s joined without shifting the first by the second's length",
        "Complete, then verify, then report",
        one(
            "ferryman/transfer/crc32.py",
            "    return _times(_zeros(length2), crc1) ^ crc2\n",
            "    return crc1 ^ crc2\n",
        ),
        (
            "tests/transfer/test_crc32.py::test_part_sized_pieces_combine",
            "tests/integration/test_transfer_seaweed.py::"
            "test_an_upload_is_completed_with_the_full_object_crc32_the_server_checks",
        ),
    ),
    Mutation(
        "an object completed before its record is not recognised",
        "Complete, then verify, then report",
        one(
            "ferryman/transfer/resume.py",
            "        if completed_from(target, stored):\n",
            "        if False:\n",
        ),
        (f"{RESUME}::test_an_object_completed_before_its_record_is_finished_sending_nothing",),
    ),
    Mutation(
        "an object put before a crash is put again on resume",
        "A file of one part is one PutObject, recorded in one commit",
        one(
            "ferryman/transfer/upload.py",
            "        verification = self._already_put(data, checksum) "
            "if transfer.resumes else None\n",
            "        verification = None\n",
        ),
        (
            "tests/transfer/test_single_put.py::"
            "test_a_crash_between_the_put_and_its_record_is_resumed_without_a_second_put[sqlite]",
        ),
    ),
    Mutation(
        "transfer writes without the owner token",
        "Fenced like every other write",
        one(
            "ferryman/store/transfers.py",
            '    transfers.c.owner_token == sa.bindparam("fence_token"),\n',
            '    sa.or_(transfers.c.owner_token == sa.bindparam("fence_token"), sa.true()),\n',
        ),
        ("tests/unit/test_transfers_store.py::test_a_taken_over_transfer_refuses_the_old_owner",),
    ),
    Mutation(
        "part records inside a job not fenced by the run's lease",
        "Fenced like every other write",
        one(
            "ferryman/store/transfers.py",
            "        if fence.run_lease is not None:\n"
            "            self._check_run(conn, fence.run_lease, now)\n"
            "        params = {",
            "        params = {",
        ),
        (
            "tests/unit/test_transfers_store.py::"
            "test_inside_a_job_part_records_are_fenced_by_the_run_lease",
        ),
    ),
    # -- async jobs -------------------------------------------------------------
    Mutation(
        "an async transaction that raised is committed",
        "Async jobs",
        one(
            "ferryman/worker/async_context.py",
            "            if not await _on(thread, block.leave, exc):",
            "            if not await _on(thread, block.leave, None):",
        ),
        (
            "tests/unit/test_async_jobs.py::"
            "test_an_async_transaction_rolls_back_when_the_job_fails[sqlite]",
        ),
    ),
    Mutation(
        "async runs one at a time",
        "Async jobs",
        one(
            "ferryman/worker/async_jobs.py",
            "        self._slots = asyncio.Semaphore(self.concurrency)\n",
            "        self._slots = asyncio.Semaphore(1)\n",
        ),
        ("tests/unit/test_async_jobs.py::test_async_runs_overlap_on_one_thread[sqlite]",),
    ),
    # -- schedules: one run per tick ---------------------------------------------
    Mutation(
        "a schedule's run_key taken from the clock, not from the tick",
        "Schedules: one run per tick",
        one(
            "ferryman/sensors/schedule.py",
            'return RunRequest(f"{self.name}:{iso(tick)}", payload)',
            'return RunRequest(f"{self.name}:{iso(datetime.now(UTC))}", payload)',
        ),
        ("tests/unit/test_schedules.py::test_one_run_per_tick_with_exact_run_keys[sqlite]",),
    ),
    Mutation(
        "a schedule evaluation asks again for the tick its cursor stands for",
        "Schedules: one run per tick",
        one(
            "ferryman/sensors/schedule.py",
            "            if last is not None and tick <= last:\n",
            "            if last is not None and tick < last:\n",
        ),
        (
            "tests/crash/test_schedule_crash.py::"
            "test_sigkilled_daemons_run_each_tick_exactly_once[sqlite]",
        ),
    ),
    Mutation(
        "catch_up='latest' runs every missed tick",
        "Schedules: one run per tick",
        one(
            "ferryman/sensors/schedule.py",
            'limit = 1 if self.catch_up == "latest" else self.max_catch_up',
            "limit = self.max_catch_up",
        ),
        ("tests/unit/test_schedules.py::test_catch_up_after_downtime[sqlite-latest-expected1-9]",),
    ),
    # -- sync and downloads ---------------------------------------------------------
    Mutation(
        "sync uploads a file outside its run (no ctx: not fenced, not resumed by the run)",
        "`sync`: each file version once, whatever is killed",
        one(
            "ferryman/transfer/sync.py",
            "            ctx=ctx,\n            concurrency=target.part_concurrency,\n",
            "            concurrency=target.part_concurrency,\n",
        ),
        ("tests/crash/test_sync_storm.py::test_a_killed_sync_leaves_exactly_the_files_in_s3",),
    ),
    Mutation(
        "a ranged GET not pinned by If-Match",
        "Downloads: pinned, checkpointed, verified, renamed",
        one(
            "ferryman/transfer/download.py",
            '                Range=f"bytes={start}-{start + size - 1}",\n'
            "                IfMatch=f'\"{download.etag}\"',\n",
            '                Range=f"bytes={start}-{start + size - 1}",\n',
        ),
        (
            "tests/transfer/test_download.py::"
            "test_an_object_replaced_during_the_download_is_refused_not_mixed",
        ),
    ),
    Mutation(
        "a resumed download fetches its confirmed ranges again",
        "Downloads: pinned, checkpointed, verified, renamed",
        one(
            "ferryman/transfer/download.py",
            "todo = [r for r in self._ranges(download) if r[0] not in kept]",
            "todo = list(self._ranges(download))",
        ),
        (
            "tests/transfer/test_download.py::"
            "test_killed_download_resumes_without_fetching_confirmed_ranges_again",
        ),
    ),
    # -- queue controls -----------------------------------------------------------
    Mutation(
        "the plain claim ignores priorities",
        "Queue controls",
        one(
            "ferryman/store/sqlite.py",
            "    .order_by(runs.c.priority.desc(), runs.c.available_at, runs.c.id)\n",
            "    .order_by(runs.c.available_at, runs.c.id)\n",
        ),
        (
            "tests/unit/test_queue_controls.py::"
            "test_higher_priorities_are_claimed_before_any_queued_lower_one[sqlite-plain]",
        ),
    ),
    Mutation(
        "a run submitted alone is claimed before its not_before (SQLite)",
        "Queue controls",
        one(
            SQLITE,
            '    f"ELSE max({_CLOCK_SQL} + :delay, :not_before) END",\n',
            '    f"ELSE {_CLOCK_SQL} + :delay END",\n',
        ),
        (
            "tests/unit/test_single_submit.py::"
            "test_one_run_per_submit_is_timed_by_one_reading_of_the_store_clock[sqlite]",
        ),
    ),
    Mutation(
        "a run is claimed before its not_before",
        "Queue controls",
        one(
            "ferryman/store/run_rows.py",
            "        return due if self.not_before is None else max(due, self.not_before)\n",
            "        return due\n",
        ),
        (
            "tests/unit/test_queue_controls.py::"
            "test_not_before_is_never_claimed_early_and_a_resubmit_does_not_move_it[sqlite]",
        ),
    ),
    Mutation(
        "a job's concurrency limit not counted",
        "Queue controls",
        one(
            "ferryman/store/limits.py",
            "            room = min(room, limits.concurrency - running)\n",
            "            room = min(room, limits.concurrency)\n",
        ),
        (
            "tests/unit/test_queue_controls.py::"
            "test_job_concurrency_is_never_exceeded_by_concurrent_claimers[sqlite]",
        ),
    ),
    Mutation(
        "runs sharing a key admitted whatever runs",
        "Queue controls",
        (
            *KEY_RUNNING_IGNORED,
            Edit(
                "ferryman/store/limits.py",
                "            ahead = taken.get(digest, key_running)\n",
                "            ahead = taken.get(digest, 0)\n",
            ),
        ),
        (
            "tests/unit/test_queue_controls.py::"
            "test_runs_sharing_a_key_never_overlap_while_other_keys_go_on[sqlite]",
        ),
    ),
    Mutation(
        "runs sharing a key admitted whatever runs (PostgreSQL)",
        "Queue controls",
        (
            *KEY_RUNNING_IGNORED,
            Edit(
                POSTGRES_LEASES,
                "                        ELSE key_running - 1 + row_number() OVER (\n",
                "                        ELSE 0 * row_number() OVER (\n",
            ),
        ),
        (
            "tests/unit/test_queue_controls.py::"
            "test_runs_sharing_a_key_never_overlap_while_other_keys_go_on[postgres]",
        ),
    ),
    Mutation(
        "a claim left short by queued runs of one key reads no further (PostgreSQL)",
        "Queue controls",
        one(
            "ferryman/store/limits.py",
            "                if done.picked >= room or done.scanned < scan:\n",
            "                if True:\n",
        ),
        (
            "tests/unit/test_queue_controls.py::"
            "test_queued_runs_of_one_key_filling_the_read_ahead_hold_up_no_other_key[postgres]",
        ),
    ),
    Mutation(
        "the rate bucket not charged",
        "Queue controls",
        one(
            "ferryman/store/limits.py",
            "            room = min(room, math.floor(tokens))\n",
            "            room = room\n",
        ),
        ("tests/crash/test_queue_storm.py::test_three_processes_keep_to_the_rate_limit[sqlite]",),
    ),
    Mutation(
        "download ranges recorded before their bytes are synced to disk",
        "Downloads: pinned, checkpointed, verified, renamed",
        one(
            "ferryman/transfer/download_ranges.py",
            "                os.fdatasync(self.sync_fd)",
            "                pass",
        ),
        (
            "tests/transfer/test_download.py::"
            "test_ranges_are_recorded_only_after_their_bytes_are_synced_to_disk[True]",
        ),
    ),
    # -- broker sources -----------------------------------------------------------
    Mutation(
        "a message the sensor cannot handle acknowledged instead of dead-lettered",
        "Broker sources",
        one(
            "ferryman/sources/consumer.py",
            "                dead.append((message, _reason(outcome)))\n",
            "                ack.append(message)\n",
        ),
        (
            "tests/brokers/test_rabbitmq.py::"
            "test_messages_the_sensor_cannot_handle_are_dead_lettered_with_the_reason",
        ),
    ),
    Mutation(
        "a broker message acknowledged before its evaluation commits",
        "Broker sources",
        one(
            "ferryman/sources/consumer.py",
            "in_flight = _InFlight(batch, committer.submit(",
            # acked as it is handed to the committer (ack returns None)
            "in_flight = session.ack([m for m in batch if m.error is None]) or _InFlight("
            "batch, committer.submit(",
        ),
        ("tests/brokers/test_rabbitmq.py::test_each_message_one_run_acked_after_commit[sqlite]",),
    ),
    # -- run control ---------------------------------------------------------------
    Mutation(
        "a timeout leaves the lease token where it was",
        TIMEOUTS,
        one(LEASES, '            "lease_token": runs.c.lease_token + 1,\n', ""),
        (
            f"{RUN_CONTROL}::test_timeout_retries_with_the_message_and_refuses_a_late_commit[sqlite]",
        ),
    ),
    Mutation(
        "the job is not told at its deadline",
        TIMEOUTS,
        one(
            "ferryman/worker/deadlines.py",
            "        watched.context.mark_lease_lost(message)\n",
            "",
        ),
        (
            f"{RUN_CONTROL}::test_timeout_retries_with_the_message_and_refuses_a_late_commit[sqlite]",
        ),
        timeout=120,  # the job waits for ctx.cancelled until its own 30 s deadline
    ),
    Mutation(
        "only queued runs can be cancelled",
        CANCELLING,
        one(
            "ferryman/store/queue.py",
            "CANCELLABLE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)\n",
            "CANCELLABLE = (RunStatus.QUEUED.value,)\n",
        ),
        (f"{RUN_CONTROL}::test_cancel_a_running_run[sqlite-transaction]",),
    ),
    Mutation(
        "a cancel leaves the lease token where it was",
        CANCELLING,
        one(
            "ferryman/store/queue.py",
            "                lease_token=runs.c.lease_token + 1,\n"
            "                finished_at=now,\n",
            "                finished_at=now,\n",
        ),
        (f"{RUN_CONTROL}::test_cancel_a_running_run[sqlite-transaction]",),
    ),
    Mutation(
        "children enqueued with a success that was refused",
        CHAINING,
        one(
            "ferryman/store/__init__.py",
            "                if ok and outcome.children:\n",
            "                if outcome.children:\n",
        ),
        (f"{RUN_CONTROL}::test_cancel_a_running_run[sqlite-return]",),
    ),
    Mutation(
        "children enqueued when ctx.submit is called, not with the success",
        CHAINING,
        one(
            "ferryman/worker/context.py",
            "        self._children.extend(self._plan_runs(",
            "        self._run_store.enqueue(self._plan_runs(",
        ),
        (f"{RUN_CONTROL}::test_children_exist_iff_the_parent_succeeded[sqlite-transaction]",),
    ),
    Mutation(
        "a Redis consumer deleted while entries are pending with it (they are lost to the group)",
        "Broker sources",
        one(
            "ferryman/sources/redis_streams.py",
            "  if fields['name'] ~= ARGV[2] and tonumber(fields['pending']) == 0\n",
            "  if fields['name'] ~= ARGV[2]\n",
        ),
        (
            "tests/brokers/test_redis_streams.py::"
            "test_a_consumer_with_pending_entries_is_never_deleted",
        ),
    ),
    Mutation(
        "a Redis consumer claims back entries of its own still waiting for their commit",
        "Broker sources",
        one(
            "ferryman/sources/redis_streams.py",
            "        return [(i, f) for i, f in entries if f is not None"
            " and i not in self._outstanding]\n",
            "        return [(i, f) for i, f in entries if f is not None]\n",
        ),
        (
            "tests/brokers/test_redis_streams.py::"
            "test_entries_waiting_for_a_slow_commit_are_not_claimed_back_by_their_own_consumer",
        ),
    ),
    Mutation(
        "pruning deletes old runs instead of emptying them",
        ONE_RUN,
        one(
            "ferryman/store/prune.py",
            "        runs.update()\n"
            "        .where(runs.c.id.in_(kept), _not_empty())\n"
            "        .values(payload=EMPTY_PAYLOAD, checkpoint=None)\n",
            "        runs.delete().where(runs.c.id.in_(kept))\n",
        ),
        (
            "tests/unit/test_prune.py::"
            "test_prune_empties_old_finished_runs_and_keeps_their_keys[sqlite]",
        ),
    ),
    # -- queue controls on the other stores, timeouts of async jobs, MariaDB's contention
    Mutation(
        "the plain claim ignores priorities (PostgreSQL)",
        "Queue controls",
        (
            Edit(
                POSTGRES_LEASES,
                "AND concurrency_digest IS NULL\n"
                "                ORDER BY priority DESC, available_at, id\n",
                "AND concurrency_digest IS NULL\n                ORDER BY available_at, id\n",
            ),
            Edit(
                POSTGRES_LEASES,
                "ORDER BY candidate.priority DESC, candidate.available_at, candidate.id\n",
                "ORDER BY candidate.available_at, candidate.id\n",
            ),
        ),
        (
            f"{QUEUE}::test_higher_priorities_are_claimed_before_any_queued_lower_one[postgres-plain]",
        ),
    ),
    Mutation(
        "an async attempt that timed out is retried at once, without its backoff",
        TIMEOUTS,
        one(
            "ferryman/worker/deadlines.py",
            "            retry_delay=delay,\n",
            "            retry_delay=0.0,\n",
        ),
        (
            f"{ASYNC_TIMEOUTS}::"
            "test_an_async_timeout_tells_the_job_ends_the_attempt_and_retries_after_the_backoff[sqlite]",
        ),
    ),
    Mutation(
        "a MariaDB deadlock inside ctx.transaction() counts as the job's failure",
        "A store outage uses no attempt",
        one(MARIADB, " | frozenset(CONTENDED)\n", "\n"),
        (
            f"{DEADLOCKS}::test_a_deadlock_victim_in_the_transaction_uses_no_attempt_and_is_due_at_once",
        ),
    ),
    Mutation(
        "a PostgreSQL deadlock inside ctx.transaction() counts as the job's failure",
        "A store outage uses no attempt",
        one(POSTGRES, ', "58030", "40P01")', ', "58030")'),
        (
            f"{DEADLOCKS}::"
            "test_a_deadlock_victim_in_the_transaction_uses_no_attempt_and_is_due_at_once[postgres]",
        ),
    ),
    Mutation(
        "outcomes written in the order the committer holds them, not by id",
        "A store outage uses no attempt",
        one(
            LEASES,
            "in_order = sorted(outcomes, key=lambda outcome: outcome.lease.run_id)",
            "in_order = list(outcomes)",
        ),
        (
            f"{LOCK_ORDER}::test_a_finish_queued_behind_a_renewal_of_the_same_runs_waits_its_turn",
            f"{LOCK_ORDER}::test_renewal_and_outcomes_over_the_same_runs_do_not_deadlock[postgres]",
            f"{LOCK_ORDER}::test_renewal_and_outcomes_over_the_same_runs_do_not_deadlock[mariadb]",
        ),
    ),
    # -- run counts carried forward ------------------------------------------------
    Mutation(
        "the run tally ignores the runs created after it",
        RUN_COUNTS,
        one(RUN_TALLY, "new = sa.or_(runs.c.id > run_id, ", "new = sa.or_(sa.false(), "),
        (f"{TALLY}::test_every_move_is_carried_exactly[sqlite]",),
    ),
    Mutation(
        "the run tally forgets run ids missing below its watermark",
        RUN_COUNTS,
        one(
            RUN_TALLY,
            "*(runs.c.id.between(lo, hi) for lo, hi, _ in runs_pending)",
            "*(sa.false() for lo, hi, _ in runs_pending)",
        ),
        (f"{TALLY}::test_a_run_committed_after_a_newer_one_is_counted_once[postgres]",),
    ),
    # -- worker views ----------------------------------------------------------------
    Mutation(
        "a worker's runs given from a window of its claims too short for the page",
        WORKER_VIEWS,
        one("ferryman/store/run_search.py", "if len(items) > limit:", "if True:"),
        (
            "tests/unit/test_worker_search.py::"
            "test_a_workers_newest_claims_are_read_first_and_no_run_is_missed[sqlite]",
        ),
    ),
    Mutation(
        "the workers page calls a holding exact past the running runs it read",
        WORKER_VIEWS,
        one(
            "ferryman/store/read_workers.py",
            "exact = len(held) <= HOLDING_COUNTED",
            "exact = True",
        ),
        (
            "tests/web/test_workers_page.py::"
            "test_a_worker_holding_more_runs_than_the_page_reads_is_shown_as_at_least_that_many"
            "[sqlite]",
        ),
    ),
)
