"""The control client's reading of a map request's answer (Headscale proves the rest, in
tests/tailnet/test_control_client.py)."""

from relay.tailnet.control import RETRYABLE, MapPollRefused, map_answer_error
from relay.tailnet.control_conn import ControlConnectionError


def test_a_map_request_refused_4xx_is_for_good_and_any_other_status_is_retried():
    """A lite update answered 500 by a Headscale just restarted once stopped the map poll
    for good (CI, 2026-12-05): only a 4xx may."""
    for status in 400, 401, 404, 499:
        error = map_answer_error(status, b"unknown node")
        assert isinstance(error, MapPollRefused) and not isinstance(error, RETRYABLE)
        assert error.status == status and "unknown node" in str(error)
    for status in 500, 502, 503, 302, 204:
        error = map_answer_error(status, b"internal server error")
        assert isinstance(error, ControlConnectionError) and isinstance(error, RETRYABLE)
        assert f"HTTP {status}" in str(error)
