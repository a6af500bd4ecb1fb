"""A consuming pass over the DLQ (redrive, replay, discard): the windows it takes, when it
stops (the deadline, --max), and what it reports: an Outcome per message taken, the messages
its selection left by reason, and how much of the queue it saw."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from meter_relay.dlq.reading import HTTP_5XX, DlqMessage
from meter_relay.dlq.scan import DeadLetterReader, ScanStats, WhenFull
from meter_relay.dlq.selection import Filters
from meter_relay.events import ParsedEvent
from meter_relay.retry import MIN_ATTEMPT_SECONDS, SETTLE_SECONDS, RateLimit

PAST_DEDUP_WINDOW = (
    "first seen more than 24 hours ago: Stripe's deduplication no longer protects it, so an "
    "event Stripe already counted would be counted again"
)
# with a ledger: it has what Stripe answered 200, not what a call without an answer delivered
OUTCOME_UNKNOWN_PAST_DEDUP = (
    "first seen more than 24 hours ago, for a reason that leaves open whether Stripe took it "
    "(no answer, a 5xx, maxReceiveCount): the ledger has only what Stripe answered, so an "
    "event Stripe took without answering would be counted again; reconcile its hours first"
)


def past_dedup_warning(message: DlqMessage, has_ledger: bool) -> str | None:
    """The warning a message sent again past Stripe's 24 hours deserves, if any: none when the
    ledger answers for it (it knows every event Stripe answered 200)."""
    if not message.past_dedup_window:
        return None
    if not has_ledger:
        return PAST_DEDUP_WINDOW
    return OUTCOME_UNKNOWN_PAST_DEDUP if message.may_be_counted else None


_UNREACHABLE = frozenset({"aws_error", "no_answer"})


class Action(StrEnum):
    """What became (or, in a dry run, would become) of one DLQ message."""

    REDRIVEN = "redriven"
    WOULD_REDRIVE = "would_redrive"
    REPLAYED = "replayed"
    PARTLY_REPLAYED = "partly_replayed"
    WOULD_REPLAY = "would_replay"
    DISCARDED = "discarded"
    PARTLY_DISCARDED = "partly_discarded"
    WOULD_DISCARD = "would_discard"
    ALREADY_DELIVERED = "already_delivered"  # the ledger has them all: deleted, not sent
    WOULD_SETTLE = "would_settle"  # a dry run's already_delivered
    KEPT = "kept"  # stays in the DLQ (as it was, or rewritten with a new reason)
    SKIPPED = "skipped"  # nothing in it can be sent (not an event, outside Stripe's window)

    @property
    def stays(self) -> bool:
        return self in (Action.KEPT, Action.SKIPPED)


class Stop(StrEnum):
    """Why a pass stopped before the end of the queue."""

    MAX = "max"  # more messages matched than --max took
    TIME = "time"  # the deadline (a Lambda invocation's)


@dataclass
class Outcome:
    """What happened to one DLQ message, and to those of its events that stay."""

    message_id: str
    action: Action
    detail: str = ""
    identifiers: list[str] = field(default_factory=list)  # the events it moved (or would)
    code: str | None = None  # why it, or the first of its events that stays, stays
    warnings: list[str] = field(default_factory=list)
    kept_events: list[dict[str, Any]] = field(default_factory=list)  # events that stay
    # events the delivery ledger says Stripe has: not sent again, whatever the 24 hours say
    already_delivered: list[str] = field(default_factory=list)

    def keep(self, event: ParsedEvent, code: str, detail: str) -> None:
        """One event stays in the DLQ, with why; the first one's code is the outcome's."""
        self.kept_events.append(
            {"index": event.index, "identifier": event.identifier, "code": code, "detail": detail}
        )
        self.code = self.code or code

    def describe(self, done: str = "") -> None:
        """The detail: what was done (`done`), then the first event that stays."""
        parts = [done] if done else []
        if self.kept_events:
            first = self.kept_events[0]
            stay = len(self.kept_events)
            parts.append(f"{stay} stay in the DLQ: event {first['index']}: {first['detail']}")
        self.detail = "; ".join(parts)

    def stays_whole(self, code: str, why: str, moved: str = "") -> None:
        """The message stays in the DLQ as it was (a write to SQS failed); `moved` says what of
        it went already (sent again later, with the same identifiers)."""
        self.action, self.code = Action.KEPT, code
        self.detail = f"{moved}; kept whole: {why}" if moved else f"kept whole: {why}"

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "action": self.action.value,
            "detail": self.detail,
            "identifiers": self.identifiers,
            "code": self.code,
            "warnings": self.warnings,
            "kept_events": self.kept_events,
            "already_delivered": self.already_delivered,
        }


@dataclass
class RunSummary:
    outcomes: list[Outcome] = field(default_factory=list)
    stopped: Stop | None = None
    not_selected: Counter[str] = field(default_factory=Counter)  # messages left, by reason
    scan: ScanStats = field(default_factory=ScanStats)
    max_held: int = 0

    @property
    def complete(self) -> bool:
        """The pass went through the whole queue: not stopped, and it saw every message."""
        return self.stopped is None and self.scan.shortfall(self.max_held) is None

    @property
    def failed(self) -> int:
        """Messages that stay in the DLQ, whole or in part (or would, in a dry run)."""
        return sum(1 for o in self.outcomes if o.action.stays or o.kept_events)

    @property
    def unreachable(self) -> bool:
        """Something stayed because AWS or Stripe could not be reached (or kept failing)."""
        codes = {o.code for o in self.outcomes if o.action.stays}
        codes.update(e["code"] for o in self.outcomes for e in o.kept_events)
        return any(code in _UNREACHABLE or HTTP_5XX.fullmatch(code or "") for code in codes)

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.action.value for o in self.outcomes))

    def stayed(self) -> Counter[str]:
        """What stays of the messages taken, by reason: messages left whole, and events left
        of messages partly done."""
        kept: Counter[str] = Counter(o.code or "?" for o in self.outcomes if o.action.stays)
        kept.update(e["code"] for o in self.outcomes if not o.action.stays for e in o.kept_events)
        return kept

    def to_json(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "stopped": self.stopped.value if self.stopped else None,
            "counts": self.counts(),
            "not_selected": dict(self.not_selected),
            "scan": self.scan.to_json(),
            "shortfall": self.scan.shortfall(self.max_held),
            "outcomes": [o.to_json() for o in self.outcomes],
        }


@dataclass
class Pass:
    """The messages a consuming operation takes, window by window: those its filters choose,
    but those in `skip` (handled by an earlier call), at most `filters.max_count`, while
    more than `reserve` seconds are left (`remaining`)."""

    reader: DeadLetterReader
    filters: Filters
    remaining: Callable[[], float] | None = None
    skip: frozenset[str] = frozenset()
    reserve: float = SETTLE_SECONDS + MIN_ATTEMPT_SECONDS

    def in_time(self, summary: RunSummary, after: float = 0.0) -> bool:
        """Whether there is time for one more message (`after` a wait for the rate limit); if
        not, the pass says it stopped."""
        if self.remaining is not None and self.remaining() - after < self.reserve:
            summary.stopped = summary.stopped or Stop.TIME
            return False
        return True

    def run(
        self,
        handle: Handler,
        *,
        rate: RateLimit | None = None,
        progress: Progress | None = None,
    ) -> RunSummary:
        """Each window's messages to `handle`, as long as there is time, each once the rate
        limit allows; what became of them, and of the pass, in the summary."""
        summary = RunSummary()
        limit = rate or RateLimit(None)
        with closing(self.windows(summary)) as windows:
            for window in windows:
                taken = []
                for message in window:
                    if not self.in_time(summary, after=limit.delay()):
                        break
                    limit.wait()
                    taken.append(message)
                outcomes, stopped = handle(taken)
                for outcome in outcomes:
                    summary.outcomes.append(outcome)
                    if progress:
                        progress(outcome)
                if stopped:  # out of time inside a message: what it did not do stays
                    summary.stopped = Stop.TIME
                if summary.stopped:
                    break
        return summary

    def windows(self, summary: RunSummary) -> Generator[list[DlqMessage]]:
        taken = 0
        summary.max_held = self.reader.max_held
        windows = self.reader.windows(when_full=WhenFull.RELEASE)
        try:
            with closing(windows):  # gives back, when it closes, what was not deleted
                for window in windows:
                    if not self.in_time(summary):
                        return
                    chosen = []
                    for message in window:
                        if message.message_id in self.skip:
                            continue
                        if not self.filters.matches(message):
                            summary.not_selected[message.code] += 1
                            continue
                        if self.filters.max_count is not None and taken >= self.filters.max_count:
                            summary.stopped = Stop.MAX  # more match than --max took
                            break
                        taken += 1
                        chosen.append(message)
                    if chosen:
                        yield chosen
                    if summary.stopped:
                        return
        finally:
            summary.scan = self.reader.stats


Progress = Callable[[Outcome], None]
# What an operation makes of a window: an outcome per message, and whether the time ran out
# inside one (what it did not do stays, and the pass stops)
Handler = Callable[[list[DlqMessage]], tuple[list[Outcome], bool]]
