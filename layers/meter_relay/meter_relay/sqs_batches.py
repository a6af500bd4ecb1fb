"""SendMessageBatch's limits, shared by everything that sends to SQS in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024  # SQS counts bodies and attributes together


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
