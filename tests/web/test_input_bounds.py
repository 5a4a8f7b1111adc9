"""Ids out of range are a 4xx with a reason, on the pages and in the API, on both stores.

Ids are 1 to 2**62. Above 2**63 - 1 SQLite's driver cannot even bind the
number (OverflowError) and PostgreSQL calls it out of range for bigint:
without the bound, both were server errors.
"""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

import ferryman as fm
from tests.web.conftest import AUTH, sign_in

LARGEST = 2**62
TOO_LARGE = [LARGEST + 1, 2**63, 10**20]


def dead_run(app: fm.App) -> fm.Run:
    (run,) = [r for r in app.get_runs() if r.run_key == "flaky-1"]
    return run


@pytest.mark.parametrize("too_large", TOO_LARGE)
def test_pages_answer_a_huge_id_with_a_422_page(client: TestClient, too_large: int) -> None:
    for path, parameter in [
        (f"/runs/{too_large}", "run_id"),
        (f"/transfers/{too_large}", "transfer_id"),
        (f"/runs?before_id={too_large}", "before_id"),
        (f"/sensors/numbers?before_id={too_large}", "before_id"),
        (f"/transfers?before_id={too_large}", "before_id"),
    ]:
        page = client.get(path)
        assert page.status_code == 422, (path, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert "<nav>" in page.text  # the dashboard's own layout, not a JSON body
        assert f"{parameter}: Input should be less than or equal to {LARGEST}" in page.text


def test_pages_answer_ids_out_of_range_or_unknown_with_4xx(client: TestClient) -> None:
    assert client.get(f"/runs/{LARGEST}").status_code == 404
    assert client.get(f"/transfers/{LARGEST}").status_code == 404
    assert client.get(f"/runs?before_id={LARGEST}").status_code == 200
    zero = client.get("/runs/0")
    assert zero.status_code == 422 and "run_id: Input should be greater than or equal to 1" in (
        zero.text
    )
    assert client.get("/runs/seven").status_code == 422


def test_the_api_answers_a_huge_id_with_422(client: TestClient) -> None:
    for too_large in TOO_LARGE:
        for path in (
            f"/api/runs/{too_large}",
            f"/api/transfers/{too_large}",
            f"/api/runs?before_id={too_large}",
            f"/api/sensors/numbers/evaluations?before_id={too_large}",
            f"/api/transfers?before_id={too_large}",
        ):
            response = client.get(path)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["detail"][0]["type"] == "less_than_equal"
    assert client.get(f"/api/runs/{LARGEST}").status_code == 404


def test_changes_naming_a_huge_id_are_refused_and_change_nothing(
    client: TestClient, web_app: fm.App
) -> None:
    dead = dead_run(web_app)
    csrf = sign_in(client)
    for too_large in TOO_LARGE:
        for path in (f"/runs/{too_large}/retry", f"/runs/{too_large}/cancel"):
            page = client.post(path, data={"csrf": csrf})
            assert page.status_code == 422 and "run_id: Input should be" in page.text, path
        cancel = client.post(f"/api/runs/{too_large}/cancel", headers=AUTH)
        assert cancel.status_code == 422
        retry = client.post("/api/runs/retry", json={"run_ids": [dead.id, too_large]}, headers=AUTH)
        assert retry.status_code == 422
        assert retry.json()["detail"][0]["loc"] == ["body", "run_ids", 1]
        group = client.post(
            "/dead-letters/retry", data={"csrf": csrf, "run_ids": f"{dead.id},{too_large}"}
        )
        assert group.status_code == 400 and f"not a run id: &#39;{too_large}&#39;" in group.text
    for not_an_id in ("0", "-3", "1_0", "+5", "٣", "x"):
        group = client.post(
            "/dead-letters/retry", data={"csrf": csrf, "run_ids": f"{dead.id},{not_an_id}"}
        )
        assert group.status_code == 400 and "not a run id" in group.text, not_an_id
    again = web_app.get_run(dead.id)
    assert again is not None and again.status is fm.RunStatus.DEAD
    assert again.updated_at == dead.updated_at


def test_the_dead_letter_form_takes_ids_with_spaces(client: TestClient, web_app: fm.App) -> None:
    dead = dead_run(web_app)
    csrf = sign_in(client)
    form = {"csrf": csrf, "run_ids": f" {dead.id} , "}
    asked = client.post("/dead-letters/retry", data=form)
    assert asked.status_code == 200 and "Retry 1 runs?" in asked.text
    group = client.post("/dead-letters/retry", data={**form, "confirmed": "yes"})
    assert group.status_code == 200 and "1 runs queued again" in group.text
    again = web_app.get_run(dead.id)
    assert again is not None and again.status is fm.RunStatus.QUEUED
