"""relay/aio.py: the retry delays every reconnecting loop of the relay uses."""

from relay.aio import Backoff


def test_delays_double_up_to_the_limit_and_start_again_after_a_success():
    delays = Backoff(0.5, 3.0)
    assert [delays.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    delays.reset()
    assert delays.next_delay() == 0.5
