"""SendMessageBatch's limits, shared by everything that sends to SQS in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024  # SQS counts bodies and attributes together
# the largest message the relay writes, its dead letters included: SQS's classic limit, which a
# queue made with MaximumMessageSize 262144 still keeps (SQS takes up to 1 MiB since 2025)
MAX_MESSAGE_BYTES = 256 * 1024
_ENVELOPE_OPEN, _ENVELOPE_CLOSE = '{"events":[', "]}"


def in_tens[T](items: Sequence[T]) -> Iterator[Sequence[T]]:
    """Consecutive groups of at most 10: the entries of one Delete/ChangeVisibility batch."""
    for start in range(0, len(items), MAX_BATCH_ENTRIES):
        yield items[start : start + MAX_BATCH_ENTRIES]


def batches[T](
    items: Iterable[T],
    size_of: Callable[[T], int],
    max_entries: int = MAX_BATCH_ENTRIES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[list[T]]:
    """Consecutive groups of at most `max_entries` items and `max_bytes` (one item may exceed)."""
    batch: list[T] = []
    size = 0
    for item in items:
        item_size = size_of(item)
        if batch and (len(batch) == max_entries or size + item_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch


def envelopes[T](
    events: Sequence[T], text_of: Callable[[T], str], room: int = MAX_MESSAGE_BYTES
) -> Iterator[tuple[list[T], str]]:
    """Consecutive runs of events with their message body: an event alone is its own text,
    several an envelope `{"events":[...]}` of at most `room` bytes (an event larger than that
    goes alone). Written back with their identity in, a message's events can grow to twice
    its size: what came as one message may need several."""
    texts = [text_of(event) for event in events]
    if len(events) == 1:
        yield list(events), texts[0]
        return
    frame = len(_ENVELOPE_OPEN) + len(_ENVELOPE_CLOSE)
    runs = batches(
        range(len(events)),
        lambda i: len(texts[i].encode()) + 1,  # and a comma: n events take n - 1
        max_entries=len(events),
        max_bytes=room - frame + 1,
    )
    for run in runs:
        if len(run) == 1:
            yield [events[run[0]]], texts[run[0]]
        else:
            body = _ENVELOPE_OPEN + ",".join(texts[i] for i in run) + _ENVELOPE_CLOSE
            yield [events[i] for i in run], body
