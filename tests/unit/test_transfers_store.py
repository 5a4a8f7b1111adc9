"""The transfers tables: fenced part records on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

import ferryman as fm
from ferryman.store import CompletedObject, ConfirmedPart, NewTransfer, Store
from ferryman.store.transfers import TransferFence
from ferryman.transfer.owners import owner_is_gone, upload_call


def new(run_id: int | None = None, path: str = "/data/a.bin") -> NewTransfer:
    return NewTransfer(
        source_path=path,
        bucket="b",
        key="k",
        part_size=5 << 20,
        follow=False,
        source_size=12 << 20,
        source_mtime=1.0,
        user_metadata_json=None,
        sidecar_key=None,
        run_id=run_id,
    )


def part(number: int) -> ConfirmedPart:
    return ConfirmedPart(
        part_number=number,
        start=(number - 1) * (5 << 20),
        size=5 << 20,
        etag=f"e{number}",
        sha256="s",
    )


def never(_transfer: fm.Transfer, _now: float) -> bool:
    return False


def always(_transfer: fm.Transfer, _now: float) -> bool:
    return True


def test_a_taken_over_transfer_refuses_the_old_owner(store_url: str) -> None:
    store = Store(store_url, create=True)
    try:
        first = store.open_transfer(
            new(), owner="h:1", lease_seconds=30, run_lease=None, may_take_over=never
        )
        assert first.created and first.fence.token == 1
        store.confirm_part(first.fence, part(1), 30)
        with pytest.raises(fm.TransferConflict, match="being uploaded by h:1"):
            store.open_transfer(
                new(), owner="h:2", lease_seconds=30, run_lease=None, may_take_over=never
            )
        second = store.open_transfer(
            new(), owner="h:2", lease_seconds=30, run_lease=None, may_take_over=always
        )
        assert not second.created and second.fence.token == 2
        assert [p.part_number for p in second.parts] == [1]
        with pytest.raises(fm.TransferConflict, match="taken over"):
            store.confirm_part(first.fence, part(2), 30)
        store.confirm_part(second.fence, part(2), 30)
        transfer = store.get_transfer(second.transfer.id)
        assert transfer is not None
        assert (transfer.parts_confirmed, transfer.bytes_confirmed) == (2, 10 << 20)
        assert transfer.owner == "h:2" and transfer.resumes == 1
        with pytest.raises(fm.ConfigurationError, match="one object has one writer"):
            store.open_transfer(
                new(path="/other"),
                owner="h:3",
                lease_seconds=30,
                run_lease=None,
                may_take_over=always,
            )
    finally:
        store.close()


def test_inside_a_job_part_records_are_fenced_by_the_run_lease(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def upload(ctx: fm.JobContext, payload: object) -> None: ...

    app.submit("upload", fm.RunRequest("r1"))
    store = app.store
    (claimed,) = store.claim(worker_id="w:1", jobs=["upload"], limit=1, lease_seconds=30)
    opened = store.open_transfer(
        new(run_id=claimed.id),
        owner="w:1",
        lease_seconds=30,
        run_lease=claimed.lease,
        may_take_over=never,
    )
    store.confirm_part(opened.fence, part(1), 30)
    store.release([claimed.lease], worker_id="w:1", reason="test")  # the lease moves on
    with pytest.raises(fm.LeaseLost):
        store.confirm_part(opened.fence, part(2), 30)
    with pytest.raises(fm.LeaseLost):
        store.finish_transfer(opened.fence, fm.TransferStatus.SUCCEEDED)
    assert [p.part_number for p in store.get_transfer_parts(opened.transfer.id)] == [1]

    # The retried run (same run id, new lease) takes the transfer over at once.
    (again,) = store.claim(worker_id="w:2", jobs=["upload"], limit=1, lease_seconds=30)
    resumed = store.open_transfer(
        new(run_id=again.id),
        owner="w:2",
        lease_seconds=30,
        run_lease=again.lease,
        may_take_over=never,
    )
    assert not resumed.created and [p.part_number for p in resumed.parts] == [1]
    store.confirm_part(resumed.fence, part(2), 30)
    stale = TransferFence(
        transfer_id=opened.fence.transfer_id, token=resumed.fence.token, run_lease=claimed.lease
    )
    with pytest.raises(fm.LeaseLost):
        store.confirm_part(stale, part(3), 30)


def test_a_transfer_belongs_to_one_upload_call_of_one_run_attempt(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    app.job(name="ship")(lambda ctx, payload: None)
    app.submit("ship", fm.RunRequest("v1"), fm.RunRequest("v2"))
    store = app.store
    first_run, second_run = sorted(
        store.claim(worker_id="host:1:w", jobs=["ship"], limit=2, lease_seconds=30),
        key=lambda run: run.run_key,
    )

    def open_for(run: Any, owner: str) -> Any:
        return store.open_transfer(
            new(run_id=run.id),
            owner=owner,
            lease_seconds=30,
            run_lease=run.lease,
            may_take_over=owner_is_gone,
        )

    with upload_call() as first_owner:
        first = open_for(first_run, first_owner)
        store.confirm_part(first.fence, part(1), 30)
        with (
            upload_call() as second_owner,
            pytest.raises(fm.TransferConflict, match=f"by {first_owner} for run {first_run.id}"),
        ):
            open_for(second_run, second_owner)
        # Refused without touching the holder: its lease and transfer go on.
        assert store.renew([first_run.lease], 30) == set()  # nothing lost
        store.confirm_part(first.fence, part(2), 30)
    # That call returned without finishing: the next one takes over and resumes.
    with upload_call() as third_owner:
        resumed = open_for(second_run, third_owner)
    assert not resumed.created and resumed.fence.token == first.fence.token + 1
    assert [p.part_number for p in resumed.parts] == [1, 2]
    # The first run's lease is intact; only its transfer moved on.
    with pytest.raises(fm.TransferConflict, match="taken over by another upload"):
        store.confirm_part(first.fence, part(3), 30)
    assert store.renew([first_run.lease], 30) == set()  # nothing lost


def test_an_upload_that_stops_short_releases_its_transfer_at_once(store_url: str) -> None:
    store = Store(store_url, create=True)
    try:

        def open_as(owner: str) -> Any:
            return store.open_transfer(
                new(),
                owner=owner,
                lease_seconds=3600,
                run_lease=None,
                may_take_over=owner_is_gone,
            )

        held = open_as("elsewhere:1/1")  # a live call on another host, an hour's lease
        with upload_call() as owner:
            with pytest.raises(fm.TransferConflict, match="being uploaded by elsewhere:1/1"):
                open_as(owner)
            assert store.release_transfer(held.fence)
            taken = open_as(owner)
        assert taken.fence.token == held.fence.token + 1
        assert not store.release_transfer(held.fence)  # the old call's release takes nothing
        with pytest.raises(fm.TransferConflict):
            store.renew_transfer(held.fence, 30)
    finally:
        store.close()


def test_each_transfer_write_returns_the_transfer_as_it_committed(store_url: str) -> None:
    store = Store(store_url, create=True)
    try:
        opened = store.open_transfer(
            new(), owner="h:1", lease_seconds=30, run_lease=None, may_take_over=never
        )
        fence = opened.fence

        def committed() -> fm.Transfer | None:
            return store.get_transfer(opened.transfer.id)

        started = store.set_transfer_upload(fence, "upload-1", 5 << 20)
        assert started.upload_id == "upload-1" and started == committed()
        sourced = store.record_transfer_source(fence, size=15 << 20, mtime=2.0)
        assert (sourced.source_size, sourced.source_mtime) == (15 << 20, 2.0)
        assert sourced == committed()
        for number in (1, 2, 3):
            store.confirm_part(fence, part(number), 30)
        forgotten = store.forget_parts(fence, [2])
        assert (forgotten.parts_confirmed, forgotten.bytes_confirmed) == (2, 10 << 20)
        assert forgotten == committed()
        recorded = store.record_transfer_object(
            fence,
            CompletedObject(
                total_size=15 << 20, sha256="f", checksum="c-3", etag="e-3", verified_by="etag"
            ),
        )
        assert (recorded.etag, recorded.status) == ("e-3", fm.TransferStatus.ACTIVE)
        assert recorded == committed()
        finished = store.finish_transfer(fence, fm.TransferStatus.SUCCEEDED)
        assert finished.status is fm.TransferStatus.SUCCEEDED and finished.finished_at is not None
        assert finished == committed()
    finally:
        store.close()
