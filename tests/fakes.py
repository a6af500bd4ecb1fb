"""Hand-written fakes shared by the DLQ tests: SQS clients, Stripe APIs and a clock.

`FakeSqs` is a standard queue in process that keeps SQS's in-flight limit, which moto does
not: past `in_flight_limit` messages received and not yet deleted or made visible again, a
long-polling receive answers empty (no error) and a short-polling one raises OverLimit, as
SQS does (about 120,000 on a standard queue). The simpler stubs log every call for tests that
assert the order of what a tool does.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from meter_relay.stripe_client import Kind, StripeAnswer

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

MAX_SQS_ATTRIBUTES = 10  # message attributes SQS takes a message (moto does not check)
MAX_SQS_MESSAGE_BYTES = 256 * 1024  # a queue at SQS's classic limit (moto's default is 1 MiB)


def sqs_size(body: str, attributes: dict[str, Any]) -> int:
    """A message's size as SQS counts it: its body, and each attribute's name, type and value."""
    return len(body.encode()) + sum(
        len(name) + len(value["DataType"]) + len(value.get("StringValue", "").encode())
        for name, value in attributes.items()
    )


def refuse_too_long(entries: list[dict[str, Any]]) -> None:
    """What SQS answers a call with a message over the queue's limit: the whole call fails."""
    for entry in entries:
        size = sqs_size(entry["MessageBody"], entry.get("MessageAttributes") or {})
        if size > MAX_SQS_MESSAGE_BYTES:
            message = f"Message must be shorter than {MAX_SQS_MESSAGE_BYTES} bytes ({size})."
            raise ClientError(
                {"Error": {"Code": "InvalidParameterValue", "Message": message}}, "SendMessageBatch"
            )


def millis(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


# ----- clocks -----------------------------------------------------------------------------------


class FakeClock:
    """monotonic() and sleep() on a clock that moves only when told (or slept on)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


# ----- SQS --------------------------------------------------------------------------------------


@dataclass
class _Message:
    message_id: str
    body: str
    attributes: dict[str, Any]
    sent_at: int  # SentTimestamp, milliseconds
    visible_at: float = 0.0
    handle: str = ""  # the current receipt handle ("" before the first receive)
    receives: int = 0
    first_receive: int | None = None


@dataclass
class _Queue:
    messages: dict[str, _Message] = field(default_factory=dict)
    visible: dict[str, None] = field(default_factory=dict)  # in the order they come back
    hidden: list[tuple[float, int, str, str]] = field(default_factory=list)  # heap


class FakeSqs:
    """Standard queues keeping SQS's in-flight limit (see the module docstring).

    A receive takes the visible messages in the order they became visible (a message made
    visible again goes to the back), hides them for VisibilityTimeout and gives each a new
    receipt handle; a stale handle changes and deletes nothing. `latency` (seconds) is spent
    in every call, outside the lock, as a network round trip would be: calls made at once
    overlap, as they do against SQS.
    """

    def __init__(
        self,
        in_flight_limit: int = 120_000,
        *,
        clock: Callable[[], float] = time.monotonic,
        latency: float = 0.0,
    ) -> None:
        self.in_flight_limit = in_flight_limit
        self.clock = clock
        self.latency = latency
        self.queues: dict[str, _Queue] = {}
        self.calls: dict[str, int] = {}
        self.empty_at_limit = 0  # long-polling receives answered empty at the limit
        self.peak_in_flight = 0
        self._ids = itertools.count()
        self._lock = threading.Lock()

    # ----- set-up and inspection ---------------------------------------------------------------
    def create_queue(self, url: str) -> str:
        self.queues[url] = _Queue()
        return url

    def put(self, url: str, body: str, attributes: dict[str, Any] | None = None) -> str:
        """A message as if sent at the start of the test (no call counted)."""
        with self._lock:
            return self._put(url, body, attributes or {})

    def bodies(self, url: str) -> list[str]:
        with self._lock:
            return [m.body for m in self.queues[url].messages.values()]

    def in_flight(self, url: str) -> int:
        with self._lock:
            queue = self._settled(url)
            return len(queue.messages) - len(queue.visible)

    # ----- the SQS API (the subset the tools use) ----------------------------------------------
    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        self._call("GetQueueAttributes")
        with self._lock:
            queue = self._settled(QueueUrl)
            visible = len(queue.visible)
            return {
                "Attributes": {
                    "ApproximateNumberOfMessages": str(visible),
                    "ApproximateNumberOfMessagesNotVisible": str(len(queue.messages) - visible),
                }
            }

    def receive_message(
        self,
        QueueUrl: str,
        MaxNumberOfMessages: int = 1,
        VisibilityTimeout: int = 30,
        WaitTimeSeconds: int = 0,
        **_: Any,
    ) -> dict[str, Any]:
        self._call("ReceiveMessage")
        with self._lock:
            queue = self._settled(QueueUrl)
            in_flight = len(queue.messages) - len(queue.visible)
            room = self.in_flight_limit - in_flight
            if room <= 0:
                if WaitTimeSeconds > 0:
                    self.empty_at_limit += 1
                    return {}  # what SQS answers to a long poll at the limit
                raise ClientError(
                    {"Error": {"Code": "AWS.SimpleQueueService.OverLimit", "Message": "limit"}},
                    "ReceiveMessage",
                )
            taken = list(itertools.islice(queue.visible, min(MaxNumberOfMessages, room)))
            now = self.clock()
            found = []
            for message_id in taken:
                message = queue.messages[message_id]
                del queue.visible[message_id]
                message.receives += 1
                message.handle = f"{message_id}#{message.receives}"
                millis_now = int(time.time() * 1000)
                message.first_receive = message.first_receive or millis_now
                message.visible_at = now + VisibilityTimeout
                heapq.heappush(
                    queue.hidden, (message.visible_at, next(self._ids), message_id, message.handle)
                )
                found.append(self._shown(message))
            self.peak_in_flight = max(self.peak_in_flight, in_flight + len(found))
            return {"Messages": found} if found else {}

    def change_message_visibility_batch(
        self, QueueUrl: str, Entries: list[dict[str, Any]]
    ) -> dict[str, Any]:
        self._call("ChangeMessageVisibilityBatch")
        assert len(Entries) <= 10
        failed = []
        with self._lock:
            queue = self._settled(QueueUrl)
            for entry in Entries:
                message = self._current(queue, entry["ReceiptHandle"])
                if message is None:
                    failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid"})
                    continue
                self._hide(queue, message, entry["VisibilityTimeout"])
        return {"Successful": [], "Failed": failed}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> dict[str, Any]:
        self._call("DeleteMessage")
        with self._lock:
            queue = self._settled(QueueUrl)
            message = self._current(queue, ReceiptHandle)
            if message is not None:
                self._drop(queue, message)
        return {}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self._call("DeleteMessageBatch")
        assert len(Entries) <= 10
        successful, failed = [], []
        with self._lock:
            queue = self._settled(QueueUrl)
            for entry in Entries:
                message = self._current(queue, entry["ReceiptHandle"])
                if message is None:
                    failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid"})
                    continue
                self._drop(queue, message)
                successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed}

    def send_message(
        self, QueueUrl: str, MessageBody: str, MessageAttributes: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        self._call("SendMessage")
        refuse_too_long([{"MessageBody": MessageBody, "MessageAttributes": MessageAttributes}])
        with self._lock:
            return {"MessageId": self._put(QueueUrl, MessageBody, MessageAttributes or {})}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self._call("SendMessageBatch")
        assert len(Entries) <= 10
        refuse_too_long(Entries)
        with self._lock:
            successful = [
                {
                    "Id": entry["Id"],
                    "MessageId": self._put(
                        QueueUrl, entry["MessageBody"], entry.get("MessageAttributes") or {}
                    ),
                }
                for entry in Entries
            ]
        return {"Successful": successful, "Failed": []}

    # ----- internals ---------------------------------------------------------------------------
    def _call(self, name: str) -> None:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def _put(self, url: str, body: str, attributes: dict[str, Any]) -> str:
        assert len(attributes) <= MAX_SQS_ATTRIBUTES, sorted(attributes)  # as SQS refuses
        queue = self.queues[url]
        message_id = f"fake-{next(self._ids):08d}"
        queue.messages[message_id] = _Message(message_id, body, attributes, int(time.time() * 1000))
        queue.visible[message_id] = None
        return message_id

    def _settled(self, url: str) -> _Queue:
        """The queue with the holds that ended by now made visible again."""
        queue = self.queues[url]
        now = self.clock()
        while queue.hidden and queue.hidden[0][0] <= now:
            _, _, message_id, handle = heapq.heappop(queue.hidden)
            message = queue.messages.get(message_id)
            if message is not None and message.handle == handle and message.visible_at <= now:
                queue.visible[message_id] = None
        return queue

    @staticmethod
    def _current(queue: _Queue, handle: str) -> _Message | None:
        message = queue.messages.get(handle.split("#", 1)[0])
        if message is None or message.handle != handle or message.message_id in queue.visible:
            return None
        return message

    def _hide(self, queue: _Queue, message: _Message, seconds: int) -> None:
        if seconds == 0:
            message.visible_at = 0.0
            message.handle = f"{message.message_id}#{message.receives}-released"
            queue.visible[message.message_id] = None
            return
        message.visible_at = self.clock() + seconds
        heapq.heappush(
            queue.hidden, (message.visible_at, next(self._ids), message.message_id, message.handle)
        )

    @staticmethod
    def _drop(queue: _Queue, message: _Message) -> None:
        del queue.messages[message.message_id]
        queue.visible.pop(message.message_id, None)

    @staticmethod
    def _shown(message: _Message) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "MessageId": message.message_id,
            "ReceiptHandle": message.handle,
            "MD5OfBody": hashlib.md5(message.body.encode(), usedforsecurity=False).hexdigest(),
            "Body": message.body,
            "Attributes": {
                "SentTimestamp": str(message.sent_at),
                "ApproximateReceiveCount": str(message.receives),
                "ApproximateFirstReceiveTimestamp": str(message.first_receive),
            },
        }
        if message.attributes:
            shown["MessageAttributes"] = message.attributes
        return shown


def sqs_message(
    body: str,
    message_id: str = "dlq-message-1",
    attributes: dict[str, Any] | None = None,
    sent: datetime = NOW,
    first_receive: datetime | None = None,
) -> Any:
    """A message as ReceiveMessage returns it (AttributeNames/MessageAttributeNames All)."""
    message: dict[str, Any] = {
        "MessageId": message_id,
        "ReceiptHandle": f"rh-{message_id}",
        "Body": body,
        "Attributes": {
            "SentTimestamp": millis(sent),
            "ApproximateReceiveCount": "1",
            "ApproximateFirstReceiveTimestamp": millis(first_receive or sent),
        },
    }
    if attributes:
        message["MessageAttributes"] = attributes
    return message


def api_messages(*ids: str) -> list[dict[str, Any]]:
    """Messages of one api_requests event each (no identifier: derived from the id)."""
    body = {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_a"}}
    return [sqs_message(json.dumps(body), i) for i in ids]


class StubSqs:
    """Just enough of an SQS client: batches to receive, and a log of every call.

    Calls are logged as ("receive", hold), ("release", handles), ("delete", handle) and
    ("send", kwargs): a batch call is logged as one entry per message, in order."""

    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.batches = batches
        self.calls: list[tuple[str, Any]] = []
        self.fail_send = False
        self.fail_send_to: str | None = None
        self.fail_delete = False
        self.send_batches = 0
        self._lock = threading.Lock()

    def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        count = len({m["MessageId"] for batch in self.batches for m in batch})
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(count),
                "ApproximateNumberOfMessagesNotVisible": "0",
            }
        }

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("receive", kwargs["VisibilityTimeout"]))
        return {"Messages": self.batches.pop(0)} if self.batches else {}

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        assert len(kwargs["Entries"]) <= 10
        assert {e["VisibilityTimeout"] for e in kwargs["Entries"]} == {0}
        self.calls.append(("release", [e["ReceiptHandle"] for e in kwargs["Entries"]]))
        return {"Successful": [], "Failed": []}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        assert len(Entries) <= 10
        if self.fail_delete:
            raise ClientError({"Error": {"Code": "InternalError"}}, "DeleteMessageBatch")
        for entry in Entries:
            self.calls.append(("delete", entry["ReceiptHandle"]))
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        attributes = kwargs.get("MessageAttributes") or {}
        assert len(attributes) <= MAX_SQS_ATTRIBUTES, sorted(attributes)  # as SQS refuses
        refuse_too_long([kwargs])
        if self.fail_send:
            raise ClientError({"Error": {"Code": "InternalError"}}, "SendMessage")
        if kwargs["QueueUrl"] == self.fail_send_to:
            raise ClientError(
                {"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue"}}, "Send"
            )
        with self._lock:
            self.calls.append(("send", kwargs))
            return {"MessageId": f"copy-{len(sends(self))}"}

    def send_message_batch(self, QueueUrl: str, Entries: list[Any]) -> dict[str, Any]:
        """Recorded as one "send" per entry, in order, as send_message records it."""
        assert len(Entries) <= 10
        refuse_too_long(Entries)
        self.send_batches += 1
        successful = []
        for entry in Entries:
            sent = self.send_message(
                QueueUrl=QueueUrl,
                MessageBody=entry["MessageBody"],
                MessageAttributes=entry.get("MessageAttributes", {}),
            )
            successful.append({"Id": entry["Id"], "MessageId": sent["MessageId"]})
        return {"Successful": successful, "Failed": []}

    def released(self) -> list[str]:
        return [h for name, handles in self.calls if name == "release" for h in handles]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def sends(sqs: StubSqs) -> list[dict[str, Any]]:
    return [kwargs for name, kwargs in sqs.calls if name == "send"]


class RepeatingSqs(StubSqs):
    """Brings the same messages on every receive, as when holds lapse as fast as it asks."""

    def __init__(self, ids: list[str], count: int) -> None:
        super().__init__([])
        self.ids, self.count, self.receives = ids, count, 0

    def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(self.count),
                "ApproximateNumberOfMessagesNotVisible": "0",
            }
        }

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.receives += 1
        assert self.receives < 100, "the scan does not end"
        return {"Messages": api_messages(*self.ids)}


class ClockedQueue:
    """A standard queue on a fake clock: a receive hides what it brings (oldest visible
    first) and gives it a new receipt handle; a handle that is no longer a message's current
    one changes and deletes nothing (SQS may act so on a stale handle)."""

    def __init__(self, clock: FakeClock, count: int, receive_seconds: float = 0.0) -> None:
        self.clock, self.receive_seconds = clock, receive_seconds
        self.visible_at = {f"m{n:02}": 0.0 for n in range(count)}
        self.handles: dict[str, str] = {}
        self.receives = 0
        self.stale = 0

    def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        visible = sum(1 for at in self.visible_at.values() if at <= self.clock.now)
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(visible),
                "ApproximateNumberOfMessagesNotVisible": str(len(self.visible_at) - visible),
            }
        }

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.receives += 1
        assert self.receives < 100, "the scan does not end"
        now = self.clock.now
        taken = [i for i, at in self.visible_at.items() if at <= now][
            : kwargs["MaxNumberOfMessages"]
        ]
        found = []
        for message_id in taken:
            self.visible_at[message_id] = now + kwargs["VisibilityTimeout"]
            self.handles[message_id] = f"{message_id}#{self.receives}"
            found.append(api_messages(message_id)[0] | {"ReceiptHandle": self.handles[message_id]})
        self.clock.now += self.receive_seconds
        return {"Messages": found}

    def _current(self, handle: str) -> str | None:
        return next(
            (i for i, h in self.handles.items() if h == handle and i in self.visible_at), None
        )

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        failed = []
        for entry in kwargs["Entries"]:
            message_id = self._current(entry["ReceiptHandle"])
            if message_id is None:
                failed.append({"Id": entry["Id"]})
            else:
                self.visible_at[message_id] = self.clock.now + entry["VisibilityTimeout"]
        return {"Failed": failed}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        successful, failed = [], []
        for entry in Entries:
            message_id = self._current(entry["ReceiptHandle"])
            if message_id is None:
                self.stale += 1
                failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid"})
            else:
                del self.visible_at[message_id]
                successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed}


# ----- Stripe -----------------------------------------------------------------------------------


def answer(status: int, code: str | None = None) -> StripeAnswer:
    kind = {200: Kind.OK, 400: Kind.REJECTED, 409: Kind.TRANSIENT, 503: Kind.TRANSIENT}[status]
    return StripeAnswer(kind, status, code, "", body={} if status == 200 else None)


class StubApi:
    """create_meter_event answers from a script, in order; every call is logged."""

    def __init__(self, answers: list[StripeAnswer]) -> None:
        self.answers = answers
        self.sent: list[str] = []

    def create_meter_event(self, event: dict[str, Any], timeout: float) -> StripeAnswer:
        self.sent.append(event["identifier"])
        return self.answers.pop(0)


class SlowApi(StubApi):
    """Each call takes `seconds` of a fake clock (and logs the timeout it was given)."""

    def __init__(self, answers: list[StripeAnswer], clock: FakeClock, seconds: float) -> None:
        super().__init__(answers)
        self.clock, self.seconds = clock, seconds
        self.timeouts: list[float] = []

    def create_meter_event(self, event: dict[str, Any], timeout: float) -> StripeAnswer:
        self.timeouts.append(timeout)
        self.clock.now += min(self.seconds, timeout)
        return super().create_meter_event(event, timeout)


class StubCancelApi:
    """cancel_meter_event answers from a script, in order; the identifiers are logged."""

    def __init__(self, answers: list[StripeAnswer]) -> None:
        self.answers = answers
        self.cancelled: list[str] = []
        self.keys: list[str | None] = []  # each call's Idempotency-Key

    @property
    def calls(self) -> int:
        return len(self.cancelled)

    def cancel_meter_event(
        self, event_name: str, identifier: str, timeout: float, *, idempotency_key: str | None
    ) -> StripeAnswer:
        self.cancelled.append(identifier)
        self.keys.append(idempotency_key)
        return self.answers.pop(0)
