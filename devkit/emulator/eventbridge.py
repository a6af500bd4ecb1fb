"""Amazon EventBridge event destinations: a thin event put on a bus as Stripe's partner
source puts it (Source `aws.partner/stripe.com/ed_...`, DetailType the event type, Detail
the notification), so rules match it as they would Stripe's."""

from __future__ import annotations

from typing import Any

from devkit.emulator.delivery import DeliveryError
from devkit.emulator.settings import EventBridgeDestination
from devkit.emulator.v2_events import ThinEvent

READ_TIMEOUT_S = 10.0


class EventBridgeTransport:
    """PutEvents to one bus. botocore does not retry here: the dispatcher does, and records
    every attempt. `total_max_attempts` counts the first call (`max_attempts` counts retries,
    so 1 there is two calls: a PutEvents that timed out after the bus took it was put again
    unrecorded)."""

    kind = "eventbridge"

    def __init__(self, config: EventBridgeDestination) -> None:
        self.config = config
        self.destination = config.event_bus_name
        self._client: Any = None

    def _events(self) -> Any:
        if self._client is None:
            import boto3  # only when a bus is configured: the emulator starts without it
            from botocore.config import Config

            session = boto3.session.Session(region_name=self.config.region)
            self._client = session.client(
                "events",
                endpoint_url=self.config.endpoint_url,
                config=Config(
                    retries={"mode": "standard", "total_max_attempts": 1},
                    connect_timeout=2,
                    read_timeout=READ_TIMEOUT_S,
                ),
            )
        return self._client

    def send(self, body: bytes, event: ThinEvent, sent_at: float) -> int | None:
        from botocore.exceptions import BotoCoreError, ClientError

        entry = {
            "Source": self.config.source,
            "DetailType": event.type,
            "Detail": body.decode(),
            "EventBusName": self.config.event_bus_name,
            "Resources": [],
        }
        try:
            answer = self._events().put_events(Entries=[entry])
        except ClientError as error:
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise DeliveryError(str(error), status) from None
        except BotoCoreError as error:
            raise DeliveryError(f"{type(error).__name__}: {error}") from None
        if answer.get("FailedEntryCount"):
            failed = answer["Entries"][0]
            raise DeliveryError(f"{failed.get('ErrorCode')}: {failed.get('ErrorMessage')}", 200)
        answered: int | None = answer.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return answered
