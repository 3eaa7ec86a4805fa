"""The two pools implement one contract (zramd.pool_api.PoolAPI): the same public names,
calls the Protocol allows accepted by both, the same class geometry. And the C pool's own
promises: close() waits for calls in flight, and a closed pool refuses calls."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from zramd import ZsPool, build_class_table
from zramd._zram import Pool
from zramd.pool_api import PoolAPI
from zramd.size_class import MAX_CHAIN_SIZE, MIN_CHAIN_SIZE, ZS_MAX_ALLOC_SIZE

#: ZsPool's public names beyond the contract: none (its structures are private, as the C
#: pool's are)
PYTHON_INTERNALS: set[str] = set()

P = inspect.Parameter


@pytest.fixture
def pools() -> Iterator[tuple[ZsPool, Pool]]:
    py, c = ZsPool(1 << 20), Pool(1 << 20)
    yield py, c
    py.close()
    c.close()


def public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def contract() -> set[str]:
    return public(PoolAPI)


def test_both_pools_expose_exactly_the_contract(pools: tuple[ZsPool, Pool]) -> None:
    py, c = pools
    assert public(c) == contract()
    assert public(py) == contract() | PYTHON_INTERNALS
    assert isinstance(py, PoolAPI)
    assert isinstance(c, PoolAPI)


def accepts(impl: inspect.Signature, proto: inspect.Signature, where: str) -> None:
    """Every call ``proto`` allows is one ``impl`` accepts, binding the same parameters."""
    impl_params = list(impl.parameters.values())
    matched = set()
    for i, p in enumerate(list(proto.parameters.values())[1:]):  # without self
        if p.kind is P.POSITIONAL_ONLY:
            assert i < len(impl_params), f"{where}: no positional parameter for {p.name}"
            q = impl_params[i]
            assert q.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD), (where, q)
        else:
            assert p.kind is P.KEYWORD_ONLY, (where, p)
            assert p.name in impl.parameters, f"{where}: no keyword {p.name}"
            q = impl.parameters[p.name]
            assert q.kind in (P.KEYWORD_ONLY, P.POSITIONAL_OR_KEYWORD), (where, q)
        assert q.default == p.default, (where, q, p)
        matched.add(q.name)
    for q in impl_params:
        assert q.name in matched or q.default is not P.empty, f"{where}: extra parameter {q}"


@pytest.mark.parametrize("name", sorted(contract()))
def test_methods_and_properties_are_compatible(pools: tuple[ZsPool, Pool], name: str) -> None:
    member = inspect.getattr_static(PoolAPI, name)
    for pool in pools:
        where = f"{type(pool).__name__}.{name}"
        if isinstance(member, property):
            values = [getattr(p, name) for p in pools]
            assert type(values[0]) is type(values[1]), (name, values)
            continue
        accepts(inspect.signature(getattr(pool, name)), inspect.signature(member), where)


def test_constructors_are_compatible() -> None:
    c = inspect.signature(Pool)
    py = inspect.signature(ZsPool)
    assert list(c.parameters) == ["max_bytes", "chain", "release_batch"]
    for name, param in c.parameters.items():
        ref = py.parameters[name]
        assert (param.kind, param.default) == (ref.kind, ref.default)


@pytest.mark.parametrize("chain", range(MIN_CHAIN_SIZE, MAX_CHAIN_SIZE + 1))
def test_the_c_class_table_is_the_kernels(chain: int) -> None:
    c = Pool(1 << 20, chain=chain)
    table = build_class_table(chain)
    assert c.class_table == table
    assert c.huge_class_size == table.huge_class_size
    assert [c.class_for_size(s) for s in range(1, ZS_MAX_ALLOC_SIZE + 1)] == [
        table.for_size(s) for s in range(1, ZS_MAX_ALLOC_SIZE + 1)
    ]
    c.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_bytes": 0}, "pool size 0 must be positive"),
        ({"max_bytes": -1}, "pool size -1 must be positive"),
        ({"max_bytes": 1 << 40}, "pool size 1099511627776 exceeds 137438949376 bytes"),
        ({"max_bytes": 1 << 80}, "exceeds 137438949376 bytes"),
        ({"max_bytes": 1 << 20, "chain": 3}, "chain size 3 outside 4..16"),
        ({"max_bytes": 1 << 20, "chain": 17}, "chain size 17 outside 4..16"),
    ],
)
def test_bad_pool_arguments_are_refused_alike(kwargs: dict[str, Any], message: str) -> None:
    for make in (ZsPool, Pool):
        with pytest.raises(ValueError, match=message):
            make(**kwargs)


def test_a_closed_pool_refuses_calls() -> None:
    c = Pool(1 << 20)
    h = c.store(b"x" * 100)
    c.close()
    c.close()  # idempotent
    for call in (lambda: c.read(h), lambda: c.store(b"y"), c.stats, c.compact):
        with pytest.raises(ValueError, match="the pool is closed"):
            call()


@pytest.mark.timeout(60)  # a stream of new calls must not hold close() off
def test_close_waits_for_calls_in_flight() -> None:
    """Threads store and read big batches while the main thread closes the pool: each call
    either completes with the right bytes or is refused; none runs on unmapped memory, and
    the stream of calls does not hold close() off."""
    c = Pool(256 << 20)
    batch = [bytes([i]) * 3000 for i in range(256)]
    started = threading.Barrier(5)
    outcomes: list[str] = []

    def worker() -> None:
        started.wait()
        try:
            while True:
                handles = c.store_many(batch)
                assert c.load_many(handles) == batch
                c.free_many(handles)
        except ValueError as e:
            outcomes.append(str(e))
        except BaseException as e:  # reported by the main thread
            outcomes.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    c.close()
    for t in threads:
        t.join()
    assert outcomes == ["the pool is closed"] * 4
