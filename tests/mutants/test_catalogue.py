"""The mutation check stays meaningful: each snippet is still in src/, each promise has one.

``make mutants`` runs outside the suite; this test runs in it. When code behind
a promise is rewritten, a mutation's snippet no longer matches and this test
names it: update the snippet (and the replacement) in tests/mutants/catalogue.py
to the new code that keeps the same promise.
"""

from __future__ import annotations

import re

import pytest

from tests.mutants.catalogue import MUTATIONS, REPO, SOURCE, Mutation, promises


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_snippet_is_found_exactly_once_and_the_mutant_compiles(mutation: Mutation) -> None:
    for edit in mutation.edits:
        text = (SOURCE / edit.path).read_text()
        found = text.count(edit.original)
        assert found == 1, (
            f"{mutation.name!r}: its snippet occurs {found} times in src/{edit.path}, "
            "not once; update it in tests/mutants/catalogue.py"
        )
        assert edit.original != edit.replacement
        compile(text.replace(edit.original, edit.replacement), edit.path, "exec")


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_mutation_names_a_promise_and_tests_that_exist(mutation: Mutation) -> None:
    assert mutation.promise in promises(), f"no heading {mutation.promise!r} in guarantees.md"
    assert mutation.tests
    for node in mutation.tests:
        path, _, name = node.partition("::")
        function = re.sub(r"\[.*\]$", "", name)
        source = (REPO / path).read_text()
        assert re.search(rf"^def {function}\(", source, flags=re.MULTILINE), f"no test {node}"


def test_every_promise_has_a_mutation_and_names_are_unique() -> None:
    covered = {mutation.promise for mutation in MUTATIONS}
    assert [p for p in promises() if p not in covered] == []
    names = [mutation.name for mutation in MUTATIONS]
    assert len(names) == len(set(names)) and len(MUTATIONS) >= 12


def test_promises_are_the_headings_that_make_them() -> None:
    page = "# Guarantees\n## Summary\n## A rule\ntext\n### A sub-rule\n## What is not promised\n"
    assert promises(page) == ["A rule", "A sub-rule"]
