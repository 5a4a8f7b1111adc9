import ferryman as fm

def test_roundtrip(make_app):
    app = make_app(lease_seconds=5)
    @app.job
    def noop(ctx, payload):
        return None
    result = app.submit("noop", fm.RunRequest("a", {}), fm.RunRequest("b", {}), fm.RunRequest("a", {}))
    assert result.created == 2 and result.deduplicated == 1
    report = app.work(until_idle=True, handle_signals=False)
    assert report.succeeded == 2
    assert {r.status for r in app.get_runs()} == {fm.RunStatus.SUCCEEDED}
