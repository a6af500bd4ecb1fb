"""A local emulator of Stripe's meter event APIs (v2 stream, sessions, events, adjustments;
v1 meters and event summaries), with fault injection and an inspection API. Never deployed."""

from devkit.emulator.app import Emulator, EmulatorServer
from devkit.emulator.state import Settings

__all__ = ["Emulator", "EmulatorServer", "Settings"]
