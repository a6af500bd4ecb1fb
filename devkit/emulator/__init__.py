"""A local emulator of Stripe's meter event APIs (v2 stream, sessions, events, adjustments;
v1 meters and event summaries; v2 core events: the thin events of asynchronous error
reports, pushed to webhooks and EventBridge), with fault injection and an inspection API.
Never deployed."""

from devkit.emulator.app import Emulator, EmulatorServer
from devkit.emulator.settings import Settings

__all__ = ["Emulator", "EmulatorServer", "Settings"]
