"""What a DLQ function's `next` skips: a replay's messages that another call would handle the
same way, never one kept only because AWS failed (its next call tries it again)."""

from __future__ import annotations

from meter_relay.dlq.delivered import LEDGER_UNREADABLE
from meter_relay.dlq.runs import Action, Outcome
from meter_relay.dlq_tools import _left_as_it_was, replay_next


def test_a_message_kept_because_aws_failed_is_not_skipped_by_the_next_call() -> None:
    """A ledger query too slow for the time left (or refused), a write to SQS that failed:
    skipped, the chain would end `complete` with those letters never replayed."""
    for why in ("the ledger: Athena: the query did not finish in time", "NotDeleted: throttled"):
        outcome = Outcome("m-1", Action.REPLAYED)
        outcome.stays_whole(LEDGER_UNREADABLE, why)
        assert not _left_as_it_was(outcome)

    refused = Outcome("m-2", Action.KEPT)
    refused.code = "payload_invalid_value"  # the same answer next time: skipped
    assert _left_as_it_was(refused)


def test_a_message_aws_keeps_failing_is_tried_once_more_then_skipped() -> None:
    """A failure that persists (the ledger's query always too slow, a permission missing):
    retried forever, a driver following `next` would never end."""

    def kept(message_id: str) -> Outcome:
        outcome = Outcome(message_id, Action.REPLAYED)
        outcome.stays_whole(LEDGER_UNREADABLE, "the ledger: AccessDenied")
        return outcome

    refused = Outcome("m-refused", Action.KEPT)
    refused.code = "payload_invalid_value"
    first = replay_next({"rate": 1}, [kept("m-1"), refused])
    assert first == {"rate": 1, "skip_messages": ["m-refused"], "retried_messages": ["m-1"]}
    second = replay_next(first, [kept("m-1"), kept("m-2")])
    assert second["skip_messages"] == ["m-refused", "m-1"]  # failed twice: skipped, and said
    assert second["retried_messages"] == ["m-2"]
    third = replay_next(second, [])
    assert "retried_messages" not in third  # none to try again
