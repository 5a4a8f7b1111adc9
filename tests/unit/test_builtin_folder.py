"""fm.sensors.folder over real temporary directories.

Stability is driven by an injected clock set relative to the files' own
timestamps, never by sleeping.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ferryman as fm
from tests.helpers import wait_until
from tests.sensor_support import Clock, Driver

# A clock this far ahead sees the files a test just wrote as stable (stable_for=2.0)
# and stays close to the filesystem's own clock, as a real clock would.
STABLE_LATER = 5.0


def change_s(path: Path) -> float:
    st = path.stat()
    return max(st.st_ctime_ns, st.st_mtime_ns) / 1e9


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def rewrite_until_newer(path: Path, than: Path, by: float = 0.0) -> None:
    """Rewrite ``path`` until its change time passes ``than``'s by ``by`` seconds.

    Filesystem timestamps advance in coarse ticks; this waits for the tick,
    not for a guessed amount of time.
    """

    def newer() -> bool:
        path.write_text(path.read_text())
        return change_s(path) > change_s(than) + by

    wait_until(newer, what=f"{path.name} to be newer than {than.name}")


def names(keys: list[str]) -> list[str]:
    return [key.split("@", 1)[0] for key in keys]


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "in"
    path.mkdir()
    return path


@pytest.fixture
def later() -> Clock:
    return Clock(time.time() + STABLE_LATER)


def test_new_files_are_requested_once_with_path_payload(inbox: Path, later: Clock) -> None:
    write(inbox / "a.csv", "1,2")
    write(inbox / "b.csv", "3")
    write(inbox / "notes.txt")
    sensor = fm.sensors.folder(inbox, "*.csv", clock=later)
    driver = Driver(sensor)

    first = driver.evaluate()
    assert names([r.run_key for r in first.run_requests]) == ["a.csv", "b.csv"]
    request = first.run_requests[0]
    st = (inbox / "a.csv").stat()
    assert request.run_key == f"a.csv@{st.st_mtime_ns}:3"
    assert request.job is None
    assert request.payload == {
        "path": os.path.join(os.path.realpath(inbox), "a.csv"),
        "relpath": "a.csv",
        "size": 3,
        "mtime_ns": st.st_mtime_ns,
    }
    assert first.skipped == 0
    assert driver.keys() == []  # the cursor stands for them
    assert sensor.__name__ == "folder_in"


def test_file_moved_in_with_an_old_mtime_is_found(
    inbox: Path, tmp_path: Path, later: Clock
) -> None:
    write(inbox / "first.csv")
    driver = Driver(fm.sensors.folder(inbox, "*.csv", clock=later))
    assert names(driver.keys()) == ["first.csv"]
    watermark_us = driver.cursor_document()["w"]

    staged = write(tmp_path / "staging" / "old.csv", "from last year")
    os.utime(staged, (1_000_000_000, 1_000_000_000))  # 2001: far below the watermark
    os.rename(staged, inbox / "old.csv")  # mv keeps the mtime; rename() sets a new ctime
    assert (inbox / "old.csv").stat().st_mtime_ns // 1000 < watermark_us

    later.advance(STABLE_LATER)
    keys = driver.keys()
    assert keys == [f"old.csv@{1_000_000_000 * 10**9}:14"]
    assert driver.keys() == []


def test_a_late_file_with_the_same_mtime_and_an_earlier_name_is_found(
    inbox: Path, tmp_path: Path, later: Clock
) -> None:
    mtime = 1_700_000_000
    b = write(inbox / "b.csv")
    os.utime(b, (mtime, mtime))
    driver = Driver(fm.sensors.folder(inbox, "*.csv", clock=later))
    assert names(driver.keys()) == ["b.csv"]

    # An (mtime, path) cursor would now stand at (mtime, "b.csv") and never see "a.csv".
    a = write(tmp_path / "staging" / "a.csv")
    os.utime(a, (mtime, mtime))
    os.rename(a, inbox / "a.csv")
    assert names(driver.keys()) == ["a.csv"]


def test_files_sharing_a_timestamp_are_all_found_across_evaluations(
    inbox: Path, later: Clock
) -> None:
    mtime_ns = 1_700_000_000_123_456_789
    for index in range(5):
        os.utime(write(inbox / f"f{index}.csv"), ns=(mtime_ns, mtime_ns))
    driver = Driver(fm.sensors.folder(inbox, "*.csv", max_per_evaluation=2, clock=later))

    batches = [driver.keys() for _ in range(4)]
    assert [len(batch) for batch in batches] == [2, 2, 1, 0]
    found = [key for batch in batches for key in batch]
    assert sorted(names(found)) == [f"f{i}.csv" for i in range(5)]
    assert len(set(found)) == 5


def test_a_file_rewritten_in_place_is_a_new_version(inbox: Path, later: Clock) -> None:
    path = write(inbox / "data.csv", "v1")
    driver = Driver(fm.sensors.folder(inbox, "*.csv", clock=later))
    [first] = driver.keys()

    path.write_text("v2 is longer")
    [second] = driver.keys()
    assert second != first and second.endswith(":12")

    # Same size, new mtime: still a new version.
    path.write_text("v3 is longer")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))
    [third] = driver.keys()
    assert third not in (first, second) and third.endswith(":12")
    assert driver.keys() == []


def test_a_file_being_written_waits_until_it_is_stable(inbox: Path) -> None:
    clock = Clock()
    sensor = fm.sensors.folder(inbox, "*.csv", stable_for=2.0, clock=clock)
    driver = Driver(sensor)
    path = write(inbox / "big.csv", "first half,")

    clock.now = change_s(path) + 0.5
    result = driver.evaluate()
    assert result.run_requests == [] and result.cursor is None
    assert sensor.last_report is not None and sensor.last_report.waiting == 1

    with path.open("a") as handle:
        handle.write("second half")
    clock.now = change_s(path) + 1.0
    assert driver.keys() == []  # written again within stable_for: still waiting

    clock.now = change_s(path) + 2.5
    [request] = driver.evaluate().run_requests
    assert request.payload["size"] == len("first half,second half")
    assert driver.keys() == []


def test_the_cursor_does_not_pass_a_file_still_being_written(inbox: Path) -> None:
    clock = Clock()
    done = write(inbox / "done.csv")
    partial = write(inbox / "partial.csv", "half")
    # The partial file must be newer than the finished one by a visible tick.
    rewrite_until_newer(partial, than=done)
    clock.now = (change_s(done) + change_s(partial)) / 2 + 2.0  # done is stable, partial not
    driver = Driver(fm.sensors.folder(inbox, "*.csv", stable_for=2.0, clock=clock))
    assert names(driver.keys()) == ["done.csv"]
    document = driver.cursor_document()
    partial_us = -(-partial.stat().st_ctime_ns // 1000)
    assert document["w"] < partial_us and document["f"] < partial_us

    clock.advance(10)
    assert names(driver.keys()) == ["partial.csv"]


def test_a_symlink_escaping_the_folder_is_skipped_with_a_warning(
    inbox: Path, tmp_path: Path, later: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    secret = write(tmp_path / "secret.csv", "do not read")
    os.symlink(secret, inbox / "escape.csv")
    write(inbox / "real.dat", "inside")
    os.symlink(inbox / "real.dat", inbox / "alias.csv")
    driver = Driver(fm.sensors.folder(inbox, "*.csv", clock=later))

    with caplog.at_level(logging.WARNING, "ferryman.sensor"):
        result = driver.evaluate()
    assert names([r.run_key for r in result.run_requests]) == ["alias.csv"]
    assert result.run_requests[0].payload["path"] == os.path.realpath(inbox / "real.dat")
    assert result.skipped == 1
    assert "symlink escape.csv points outside the folder" in caplog.text

    caplog.clear()
    again = driver.evaluate()
    assert (again.run_requests, again.skipped) == ([], 0)  # reported once, not every time
    assert "escape.csv" not in caplog.text


UNREADABLE_SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys, time
    import ferryman as fm
    from tests.sensor_support import Clock, Driver

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("ferryman.sensor").addHandler(handler)
    # Built before dropping to nobody, who may not read the interpreter's own
    # files: fm.sensors and what it uses are imported on first use.
    driver = Driver(fm.sensors.folder(sys.argv[1], "*.csv", clock=Clock(time.time() + 5)))
    os.setgid(65534)
    os.setuid(65534)  # root reads everything; an ordinary user does not
    result = driver.evaluate()
    print(json.dumps({
        "keys": [r.run_key.split("@")[0] for r in result.run_requests],
        "skipped": result.skipped,
        "log": records,
    }))
    """
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can list (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="ferryman-folder-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def test_an_unreadable_file_is_reported_and_the_rest_goes_on(
    shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("a.csv", "locked.csv", "z.csv"):
        write(shared_dir / name).chmod(0o644)
    (shared_dir / "locked.csv").chmod(0o000)

    if os.geteuid() == 0:
        output = subprocess.run(
            [sys.executable, "-c", UNREADABLE_SCRIPT, str(shared_dir)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parents[2],
            timeout=60,
        )
        seen = json.loads(output.stdout)
        keys, skipped, log = seen["keys"], seen["skipped"], "\n".join(seen["log"])
    else:
        with caplog.at_level(logging.WARNING, "ferryman.sensor"):
            driver = Driver(fm.sensors.folder(shared_dir, "*.csv", clock=Clock(time.time() + 60)))
            result = driver.evaluate()
        keys = names([r.run_key for r in result.run_requests])
        skipped, log = result.skipped, caplog.text
    assert keys == ["a.csv", "z.csv"]
    assert skipped == 1
    assert "file locked.csv is not readable by this process" in log


def test_a_file_vanishing_between_listing_and_stat_is_reported(
    inbox: Path, later: Clock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a.csv", "gone.csv", "z.csv"):
        write(inbox / name)
    real_scandir = os.scandir

    class ListThenDelete:
        """The listing is taken, then another process deletes a file before its stat."""

        def __init__(self, path: str) -> None:
            with real_scandir(path) as entries:
                self.entries = list(entries)
            (inbox / "gone.csv").unlink(missing_ok=True)

        def __enter__(self) -> ListThenDelete:
            return self

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            return iter(self.entries)

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(os, "scandir", ListThenDelete)
    with caplog.at_level(logging.WARNING, "ferryman.sensor"):
        result = Driver(fm.sensors.folder(inbox, "*.csv", clock=later)).evaluate()
    assert names([r.run_key for r in result.run_requests]) == ["a.csv", "z.csv"]
    assert result.skipped == 1
    assert "file gone.csv vanished while the folder was listed" in caplog.text


def test_a_dangling_symlink_is_reported(
    inbox: Path, later: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    write(inbox / "ok.csv")
    os.symlink(inbox / "missing.dat", inbox / "dangling.csv")
    with caplog.at_level(logging.WARNING, "ferryman.sensor"):
        result = Driver(fm.sensors.folder(inbox, "*.csv", clock=later)).evaluate()
    assert names([r.run_key for r in result.run_requests]) == ["ok.csv"]
    assert result.skipped == 1
    assert "dangling.csv" in caplog.text


def test_routes_pick_the_job_and_unmatched_files_are_counted(
    inbox: Path, later: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("a.xml", "b.csv", "c.txt", "d.csv.xml"):
        write(inbox / name)
    routes = {r"\.xml$": "parse_xml", r"\.csv": "load_csv"}
    driver = Driver(fm.sensors.folder(inbox, routes=routes, clock=later))
    with caplog.at_level(logging.WARNING, "ferryman.sensor"):
        result = driver.evaluate()
    jobs = {r.run_key.split("@")[0]: r.job for r in result.run_requests}
    assert jobs == {"a.xml": "parse_xml", "b.csv": "load_csv", "d.csv.xml": "parse_xml"}
    assert result.skipped == 1
    assert "1 files match no route and were skipped, e.g. c.txt" in caplog.text
    assert driver.evaluate().skipped == 0  # counted once, not at every evaluation


def test_recursive_listing_patterns_hidden_files_and_symlinked_directories(
    inbox: Path, later: Clock
) -> None:
    write(inbox / "a.csv")
    write(inbox / "sub" / "b.csv")
    write(inbox / "sub" / "deeper" / "c.csv")
    write(inbox / ".partial.csv")
    write(inbox / ".staging" / "d.csv")
    os.symlink(inbox / "sub", inbox / "loop")  # not descended into

    flat = Driver(fm.sensors.folder(inbox, "*.csv", clock=later))
    assert names(flat.keys()) == ["a.csv"]
    deep = Driver(fm.sensors.folder(inbox, "*.csv", recursive=True, clock=later))
    assert sorted(names(deep.keys())) == ["a.csv", "sub/b.csv", "sub/deeper/c.csv"]
    by_path = Driver(fm.sensors.folder(inbox, "sub/*.csv", recursive=True, clock=later))
    # fnmatch's "*" crosses "/", as documented for patterns matched on the path.
    assert sorted(names(by_path.keys())) == ["sub/b.csv", "sub/deeper/c.csv"]
    hidden = Driver(fm.sensors.folder(inbox, ".*.csv", clock=later))
    assert names(hidden.keys()) == [".partial.csv"]


def test_a_directory_moved_into_a_recursive_tree_brings_its_files(
    inbox: Path, tmp_path: Path
) -> None:
    window = 0.05
    batch = tmp_path / "staging" / "batch"
    old = write(batch / "x.csv")
    first = write(inbox / "first.csv")
    # x.csv must be older than first.csv by more than the safety window.
    rewrite_until_newer(first, than=old, by=2 * window)
    clock = Clock(change_s(first) + 2.0 + 1e-4)  # first.csv has just become stable
    driver = Driver(
        fm.sensors.folder(inbox, "*.csv", recursive=True, safety_window=window, clock=clock)
    )
    assert names(driver.keys()) == ["first.csv"]
    assert old.stat().st_ctime_ns // 1000 <= driver.cursor_document()["f"]  # below the floor

    os.rename(batch, inbox / "batch")  # the directory's ctime moves; x.csv's does not
    clock.now = change_s(inbox / "batch") + 2.0 + 1e-4
    assert names(driver.keys()) == ["batch/x.csv"]
    assert driver.keys() == []


def test_a_missing_folder_fails_the_evaluation(tmp_path: Path) -> None:
    sensor = fm.sensors.folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        Driver(sensor).evaluate()


def test_bad_arguments_are_configuration_errors(inbox: Path) -> None:
    with pytest.raises(fm.ConfigurationError):
        fm.sensors.folder(inbox, stable_for=-1)
    with pytest.raises(fm.ConfigurationError):
        fm.sensors.folder(inbox, routes={"(": "job"})
    with pytest.raises(fm.ConfigurationError, match="not a folder cursor"):
        fm.sensors.folder(inbox)(Driver(fm.sensors.folder(inbox)).ctx, '{"v":1,"kind":"s3"}')


def test_100k_files_with_100_new_evaluate_from_a_bounded_cursor(
    tmp_path: Path, later: Clock, record_property: Callable[[str, object], None]
) -> None:
    """A cost smoke test (not timed): the figures are in bench/sensors.py."""
    inbox = tmp_path / "big"
    inbox.mkdir()
    for index in range(100_000):
        os.close(os.open(inbox / f"f{index:06d}.csv", os.O_CREAT | os.O_WRONLY, 0o644))
    later.now = time.time() + STABLE_LATER  # creating the files took a while
    sensor = fm.sensors.folder(inbox, "*.csv", max_per_evaluation=200_000, clock=later)
    driver = Driver(sensor)
    assert len(driver.evaluate().run_requests) == 100_000
    assert driver.cursor is not None and len(driver.cursor) < 50_000

    for index in range(100):
        os.close(os.open(inbox / f"new{index:03d}.csv", os.O_CREAT | os.O_WRONLY, 0o644))
    # Past the new files' stability by the clock of the moment: on a busy machine
    # the first evaluation alone may outlast STABLE_LATER.
    later.now = max(later.now, time.time()) + STABLE_LATER
    started = time.perf_counter()
    keys = driver.keys()
    record_property("evaluation_seconds", round(time.perf_counter() - started, 3))
    assert sorted(names(keys)) == [f"new{index:03d}.csv" for index in range(100)]
    assert sensor.last_report is not None and sensor.last_report.files_matched == 100_100


# -- names that are not UTF-8 and deep paths, through the store ---------------------

UNDECODABLE = b"report-\xff\xfe.csv"  # Latin-1 bytes in a name, as a Windows share may hand over
DEEP_PARTS = ["d" * 200] * 15  # a relative path of some 3 kB, past PostgreSQL's btree limit


def undecodable_and_deep_files(inbox: Path) -> Path:
    write(inbox / "good.csv", "good")
    with open(os.path.join(os.fsencode(inbox), UNDECODABLE), "w") as handle:
        handle.write("latin-1 named")
    deep = inbox.joinpath(*DEEP_PARTS, "deep.csv")
    write(deep, "deep")
    return deep


def test_undecodable_names_and_deep_paths_are_requested_with_openable_paths(
    make_app: type[fm.App], inbox: Path, later: Clock
) -> None:
    deep = undecodable_and_deep_files(inbox)
    app = make_app()
    contents: dict[str, str] = {}

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
        with open(payload["path"]) as handle:  # the payload's path opens the file as it is
            contents[ctx.run_key] = handle.read()

    app.poll_sensor(job="load", interval=30, name="incoming")(
        fm.sensors.folder(inbox, "*.csv", recursive=True, clock=later)
    )
    (evaluation,) = app.tick(force=True)
    assert (evaluation.outcome, evaluation.runs_requested) == (fm.EvaluationOutcome.OK, 3)
    app.work(until_idle=True, concurrency=1, handle_signals=False)
    assert sorted(contents.values()) == ["deep", "good", "latin-1 named"]
    by_content = {text: key for key, text in contents.items()}
    # The undecodable bytes are spelled \xNN in the run_key, which is marked as escaped.
    escaped = by_content["latin-1 named"]
    assert escaped.startswith("report-\\xff\\xfe.csv@") and escaped.endswith(":escaped")
    assert escaped.isprintable()
    assert by_content["deep"].startswith(str(deep.relative_to(inbox)) + "@")
    (latin,) = [run for run in app.get_runs() if run.run_key == escaped]
    assert os.fsencode(latin.payload["relpath"]) == UNDECODABLE
    assert {run.status for run in app.get_runs()} == {fm.RunStatus.SUCCEEDED}
    (again,) = app.tick(force=True)  # each file once
    assert (again.outcome, again.runs_requested) == (fm.EvaluationOutcome.OK, 0)


def test_escaped_run_keys_are_reversible_and_never_collide(inbox: Path, later: Clock) -> None:
    from ferryman.sensors.builtin.folder import relpath_of

    # Undecodable names, and valid names spelled like their escaped forms.
    file_names = [
        UNDECODABLE,
        b"a\xff.csv",
        b"a\\xff.csv",
        b"back\\slash-\xff.csv",
        b"a\\xff.csv@1:2",
    ]
    for name in file_names:
        with open(os.path.join(os.fsencode(inbox), name), "w") as handle:
            handle.write("same size")
    keys = Driver(fm.sensors.folder(inbox, "*.csv*", clock=later)).keys()
    assert len(set(keys)) == len(file_names)
    assert all(key.isprintable() for key in keys)
    assert sorted(relpath_of(key) for key in keys) == sorted(file_names)


def test_tick_on_the_command_line_requests_an_undecodable_file_in_one_line(
    tmp_path: Path, inbox: Path
) -> None:
    undecodable_and_deep_files(inbox)
    module = tmp_path / "undecodable_app.py"
    module.write_text(
        textwrap.dedent(
            f"""
            import ferryman as fm

            app = fm.App()

            @app.job
            def load(ctx, payload):
                pass

            app.poll_sensor(job="load", name="incoming")(
                fm.sensors.folder({str(inbox)!r}, "*.csv", recursive=True, stable_for=0)
            )
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    # The app's module first, then whatever the caller put there (make mutants: its copy of src/).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "ferryman", "--app", "undecodable_app:app"]
    command += ["--store", f"sqlite:///{tmp_path}/store.db", "tick", "--json"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (evaluation,) = json.loads(result.stdout)
    assert (evaluation["outcome"], evaluation["runs_requested"]) == ("ok", 3)


def test_several_include_globs_and_exclude_globs(inbox: Path, later: Clock) -> None:
    for name in ("a.mp4", "b.mov", "c.mp4.tmp", "d.txt", "raw/e.mp4", "raw/skip/f.mp4"):
        write(inbox / name)
    sensor = fm.sensors.folder(
        inbox, ["*.mp4", "*.mov"], exclude=["*.tmp", "raw/skip/*"], recursive=True, clock=later
    )
    assert sorted(names(Driver(sensor).keys())) == ["a.mp4", "b.mov", "raw/e.mp4"]


def test_with_a_done_suffix_a_file_waits_for_its_marker_not_for_stability(inbox: Path) -> None:
    now = Clock(time.time())  # every file is "still being written" by this clock
    write(inbox / "cam1.ts", "frames")
    write(inbox / "cam2.ts", "frames")
    driver = Driver(fm.sensors.folder(inbox, "*", done_suffix=".done", clock=now))
    assert driver.keys() == []
    write(inbox / "cam2.ts.done", "")
    assert names(driver.keys()) == ["cam2.ts"]  # the marker itself is never requested
    write(inbox / "cam1.ts.done", "")
    assert names(driver.keys()) == ["cam1.ts"]
    assert driver.keys() == []
