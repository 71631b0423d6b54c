"""The command's log formats (relay/cli.py): a record kopf logs about one object names it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import kopf
import pytest

from relay.cli import JsonFormatter, TextFormatter

ENDPOINT = kopf.Body(
    {
        "apiVersion": "relayfleet.io/v1alpha1",
        "kind": "RelayEndpoint",
        "metadata": {"namespace": "team-a", "name": "alice-bob", "uid": "u-1"},
    }
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, logging.StreamHandler[io.StringIO]]]:
    handler = logging.StreamHandler(io.StringIO())
    logger = logging.getLogger("tests.log_formats")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


def test_a_text_line_about_an_object_names_it_and_others_do_not(captured):
    logger, handler = captured
    handler.setFormatter(TextFormatter())
    about = kopf.ObjectLogger(body=ENDPOINT, settings=kopf.OperatorSettings())
    about.logger = logger
    about.info("Handler %r succeeded.", "allocate")
    logger.info("serving /metrics")
    first, second = handler.stream.getvalue().splitlines()
    assert first.endswith(": [team-a/alice-bob] Handler 'allocate' succeeded.")
    assert second.endswith(" INFO tests.log_formats: serving /metrics")


def test_a_json_line_about_an_object_has_it_in_its_own_field(captured):
    logger, handler = captured
    handler.setFormatter(JsonFormatter())
    about = kopf.ObjectLogger(body=ENDPOINT, settings=kopf.OperatorSettings())
    about.logger = logger
    about.warning("patch refused")
    logger.info("plain")
    first, second = (json.loads(line) for line in handler.stream.getvalue().splitlines())
    assert first["object"] == "team-a/alice-bob"
    assert first["message"] == "patch refused"
    assert "object" not in second
