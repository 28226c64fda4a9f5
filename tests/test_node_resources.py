"""Capacity accounting per resource kind, the tariff, the CPU job and the file store."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.files import FileStore
from node.resources import (
    MAX_JOB_ITERATIONS,
    NODE_KINDS,
    Ask,
    ChannelResource,
    ComputeResource,
    CoverageResource,
    FilesResource,
    Tariff,
    hash_job,
    job_iterations,
    make_resource,
    node_kind,
    parse_micro,
)
from protocol import MICRO
from protocol.errors import CapacityExhaustedError, OutOfRangeError
from protocol.kinds import KINDS

T = 1_000


def test_coverage_grants_consume_until_the_epoch_reopens() -> None:
    r = CoverageResource()
    r.open(2 * MICRO, now=T)
    r.consume(MICRO, now=T, requester="a")
    r.consume(MICRO // 2, now=T + 1, requester="b")
    assert r.remaining(T + 10**6) == MICRO // 2
    with pytest.raises(CapacityExhaustedError):
        r.consume(MICRO, now=T + 2, requester="a")
    assert (r.remaining(T), r.grants, r.granted_total) == (MICRO // 2, 2, 3 * MICRO // 2)
    r.open(MICRO, now=T + 5)
    assert (r.remaining(T + 5), r.grants) == (MICRO, 0)


def test_channels_are_whole_and_held_for_one_session() -> None:
    r = ChannelResource(session_seconds=10)
    r.open(2 * MICRO + 5, now=T)  # part of a channel cannot be opened
    assert r.opened == 2 * MICRO
    r.consume(MICRO, now=T, requester="a")
    r.consume(MICRO, now=T + 5, requester="b")
    assert r.remaining(T + 9) == 0 and r.sessions(T + 9) == 2
    with pytest.raises(CapacityExhaustedError):
        r.consume(MICRO, now=T + 9, requester="c")
    assert r.remaining(T + 10) == MICRO  # the first session ended at T + 10
    assert r.remaining(T + 15) == 2 * MICRO
    with pytest.raises(OutOfRangeError):
        r.consume(MICRO // 2, now=T + 15, requester="c")
    with pytest.raises(OutOfRangeError):
        ChannelResource(session_seconds=0)


def test_compute_counts_use_per_requester() -> None:
    r = ComputeResource()
    r.open(5 * MICRO, now=T)
    r.consume(MICRO, now=T, requester="a")
    r.consume(2 * MICRO, now=T, requester="a")
    r.consume(MICRO, now=T, requester="b")
    assert dict(r.used_by()) == {"a": 3 * MICRO, "b": MICRO}
    r.open(5 * MICRO, now=T + 1)
    assert dict(r.used_by()) == {}


def test_a_failed_consume_changes_nothing() -> None:
    r = FilesResource()
    r.open(100, now=T)
    with pytest.raises(CapacityExhaustedError):
        r.consume(101, now=T, requester="a")
    with pytest.raises(OutOfRangeError):
        r.consume(0, now=T, requester="a")
    with pytest.raises(OutOfRangeError):
        r.open(-1, now=T)
    assert (r.remaining(T), r.grants) == (100, 0)


def test_every_wire_kind_has_node_behaviour_and_its_accounting() -> None:
    assert list(NODE_KINDS) == list(KINDS)
    for name, wire in KINDS.items():
        resource = make_resource(name)
        assert (name, wire.granularity) == (resource.KIND, resource.UNIT)
        assert NODE_KINDS[name].wire is wire
    for unknown in ("spectrum", "", "FILES"):
        with pytest.raises(OutOfRangeError):
            make_resource(unknown)
        with pytest.raises(OutOfRangeError):
            node_kind(unknown)


def test_what_a_roamer_asks_of_each_kind() -> None:
    roam, share = MICRO // 10, 3_000
    asks = {name: NODE_KINDS[name].ask(amount=None, roam_amount=roam, share=share,
                                       item="ab" * 32, cost=1_024)
            for name in KINDS}
    assert asks["wlan_coverage"] == Ask(resource=None, amount=roam)
    assert asks["wlan_channels"] == Ask(resource=None, amount=MICRO)  # one whole channel
    assert asks["files"] == Ask(item="ab" * 32, resource="file:" + "ab" * 32, amount=1_024)
    assert asks["compute"] == Ask(resource="compute", amount=share)  # within its share
    # an amount named by the caller wins, except for an item, which costs what it costs
    assert NODE_KINDS["compute"].ask(amount=7, roam_amount=roam, share=share).amount == 7
    empty = NODE_KINDS["files"].ask(amount=5, roam_amount=roam, share=0, item="x", cost=0)
    assert empty.amount == 1  # an empty file still costs one
    with pytest.raises(OutOfRangeError):
        NODE_KINDS["files"].ask(amount=None, roam_amount=roam, share=share)


@settings(max_examples=50, deadline=None)
@given(
    opened=st.integers(0, 5 * MICRO),
    ops=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 30)), max_size=30),
)
def test_channels_in_use_never_exceed_what_was_opened(
    opened: int, ops: list[tuple[int, int]]
) -> None:
    r = ChannelResource(session_seconds=20)
    r.open(opened, now=0)
    now = 0
    for channels, dt in ops:
        now += dt
        with contextlib.suppress(CapacityExhaustedError):
            r.consume(channels * MICRO, now=now, requester="x")
        assert 0 <= r.in_use(now) <= r.opened
        assert r.remaining(now) == r.opened - r.in_use(now)


def test_tariff_identity_and_menu() -> None:
    assert Tariff().share(1_234_567) == 1_234_567
    menu = Tariff.parse("0:0,1:2,3:3")
    assert menu.share(0) == 0
    assert menu.share(MICRO // 2) == MICRO
    assert menu.share(2 * MICRO) == 5 * MICRO // 2
    assert menu.share(10 * MICRO) == 3 * MICRO  # flat beyond the last point
    for bad in ("1:1,1:2", "0:2,1:1", "x", "1:y"):
        with pytest.raises(OutOfRangeError):
            Tariff.parse(bad)


def test_parse_micro_is_exact_and_bounded() -> None:
    assert parse_micro("0.1") == 100_000
    assert parse_micro("2.5") == 2_500_000
    assert parse_micro("0.0000019") == 1  # floor
    for bad in ("-1", "nan", "inf", "abc", "1e20"):
        with pytest.raises(OutOfRangeError):
            parse_micro(bad)
    with pytest.raises(OutOfRangeError):
        parse_micro("1.5", high=MICRO)


def test_hash_job_is_a_bounded_sha256_chain() -> None:
    seed = b"\x01" * 16
    assert job_iterations(1) == 1
    assert job_iterations(MICRO, per_unit=3) == 3
    assert job_iterations(10**15) == MAX_JOB_ITERATIONS
    expected = hashlib.sha256(hashlib.sha256(hashlib.sha256(seed).digest()).digest()).hexdigest()
    assert hash_job(MICRO, seed=seed, per_unit=3) == expected


def test_file_store_indexes_by_content_and_checks_on_read(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"")
    (tmp_path / "same.txt").write_bytes(b"hello")  # same content, one entry
    (tmp_path / "link").symlink_to(tmp_path / "a.txt")
    store = FileStore(tmp_path)
    assert store.scan() == 2
    h = hashlib.sha256(b"hello").hexdigest()
    empty = hashlib.sha256(b"").hexdigest()
    assert store.listing() == sorted(
        [{"sha256": h, "size": 5}, {"sha256": empty, "size": 0}], key=lambda f: str(f["sha256"])
    )
    assert store.costs() == {"file:" + h: 5, "file:" + empty: 1}
    assert store.read(h) == b"hello"
    with pytest.raises(OutOfRangeError):
        store.read("0" * 64)
    with pytest.raises(OutOfRangeError):
        store.read("../etc/passwd")
    entry = store.get(h)
    assert entry is not None
    entry.path.write_bytes(b"changed")
    with pytest.raises(OSError):
        store.read(h)
    assert FileStore().scan() == 0
