"""The memory store's own test hooks (its S3 semantics are held by tests/test_store_contract.py)."""

from __future__ import annotations

import pytest
from syncd.store import FOLDER, KEY, TRANSIENT, StoreError

from tests.support.memstore import MemoryStore


def test_a_failure_injected_n_times_fails_exactly_n_calls() -> None:
    store = MemoryStore()
    store.fail("read", TRANSIENT, times=2)
    for _ in range(2):
        with pytest.raises(StoreError):
            store.read("k")
    assert store.read("k") is None


def test_a_failure_for_one_key_leaves_other_keys_alone() -> None:
    store = MemoryStore()
    store.fail("write", KEY, key="bad")
    assert store.write("good", b"1", if_absent=False)
    with pytest.raises(StoreError) as err:
        store.write("bad", b"1", if_absent=False)
    assert err.value.scope == KEY


def test_a_keyed_delete_failure_is_reported_per_key_and_the_rest_are_deleted() -> None:
    store = MemoryStore()
    for key in ("a", "b"):
        store.write(key, b"", if_absent=False)
    store.fail("delete", KEY, key="a", code="AccessDenied")
    errors = store.delete(["a", "b"])
    assert list(errors) == ["a"] and errors["a"].startswith("AccessDenied")
    assert store.read("a") == b"" and store.read("b") is None


def test_a_hook_sees_every_call_first_and_may_fail_it() -> None:
    store = MemoryStore()
    seen: list[tuple[str, str | None]] = []

    def hook(op: str, key: str | None) -> None:
        seen.append((op, key))
        if op == "head":
            raise StoreError("revoked", scope=FOLDER)

    store.hook = hook
    store.write("k", b"", if_absent=True)
    with pytest.raises(StoreError):
        store.head("k")
    assert seen == [("write", "k"), ("head", "k")]


def test_listing_order_differs_from_key_order() -> None:
    store = MemoryStore(seed=1)
    keys = [f"k{i:03d}" for i in range(50)]
    for key in keys:
        store.write(key, b"", if_absent=False)
    listed = [o.key for page in store.list("") for o in page]
    assert sorted(listed) == keys and listed != keys


def test_pages_hold_at_most_page_size_keys() -> None:
    store = MemoryStore(page_size=3)
    for i in range(7):
        store.write(f"k{i}", b"", if_absent=False)
    assert [len(page) for page in store.list("")] == [3, 3, 1]
