"""The operator's handlers called as kopf calls them, their parts in the memo, Redis down.

A store outage must reach kopf as one kind of retry, whichever handler met it.
The handlers' normal path through kopf is tested end to end in test_e2e.py.
"""

from __future__ import annotations

import logging

import kopf
import pytest

from relay.protocol.keys import DiscoPrivateKey
from relay.resource.definition import ALLOCATED, REALLOCATE_ANNOTATION, RELAY_DEAD_ANNOTATION
from relay_operator import handlers
from relay_operator.allocating import Allocator
from relay_operator.config import OperatorConfig
from relay_operator.metrics import OperatorMetrics

RETRY = 3


def endpoint() -> kopf.Body:
    keys = [str(DiscoPrivateKey.generate().public) for _ in range(2)]
    return kopf.Body(
        {
            "metadata": {
                "name": "e1",
                "namespace": "ns",
                "uid": "uid-1",
                "annotations": {REALLOCATE_ANNOTATION: "1", RELAY_DEAD_ANNOTATION: "relay-1"},
            },
            "spec": {"discoKeys": keys},
            "status": {"phase": ALLOCATED, "relay": "relay-1", "vni": 1, "lamportID": 1},
        }
    )


async def test_every_handler_retries_a_store_outage_the_same_way(store, redis_server):
    allocator = Allocator(store)
    memo = handlers.OperatorMemo(
        allocator=allocator,
        metrics=OperatorMetrics(lambda: allocator.last_relays),
        config=OperatorConfig(store=redis_server.url()),
    )
    redis_server.stop()
    body = endpoint()
    common = {"body": body, "patch": kopf.Patch(), "retry": RETRY, "memo": memo}
    calls = {
        "allocate": handlers.allocate(**common, endpoints={}),
        "reallocate": handlers.reallocate(**common, new="1"),
        "relay-dead": handlers.relay_dead(**common, new="relay-1"),
        "free": handlers.free(
            status=body.status, retry=RETRY, logger=logging.getLogger(__name__), memo=memo
        ),
    }
    for name, call in calls.items():
        with pytest.raises(kopf.TemporaryError, match=r"^store unavailable: ") as caught:
            await call
        assert caught.value.delay == handlers.retry_delay(RETRY), name
