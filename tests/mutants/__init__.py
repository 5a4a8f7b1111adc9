"""The mutation check of docs/guarantees.md: break the code behind a promise, watch a test fail.

``make mutants`` (``python -m tests.mutants``) applies each mutation of
:mod:`tests.mutants.catalogue` to a copy of ``src/`` and runs the tests
named for its promise against that copy; a mutation no test notices is a
promise no test proves.
"""
