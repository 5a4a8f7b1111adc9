"""``--app tests.web.served_app:app`` for the CLI tests; ``--store`` picks the database."""

from tests.web.web_app import make_app

app = make_app("sqlite:///ferryman.db")  # replaced by --store before anything is opened
