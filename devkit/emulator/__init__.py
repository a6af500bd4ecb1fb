"""A local emulator of Stripe's meter event APIs (v2 stream, sessions, events, adjustments;
v1 meters and event summaries; v2 core events: the thin events of asynchronous error
reports, pushed to webhooks and EventBridge), with fault injection and an inspection API.
Never deployed.

Modules, one concern each:
  app          the service: dispatch, authentication, faults, rate limits; EmulatorServer
  stripe_api   Stripe's routes and their request checks
  inspection   the /_emulator/ routes tests read and steer
  state        the account: meters, sessions, meter events, deduplication, cancels
  summaries    meter event summaries (formula, windows, Stripe's parameter rules)
  error_reports  failures gathered per meter and validation window
  v2_events    thin events: the event log, its list filters and pages
  delivery     the worker that pushes events, with retries and a record
  webhooks, eventbridge  the two kinds of event destination
  settings     run-time settings, checked; faults: injected faults and rate limits
  httpserver, requestlog, masking, apierror, timefmt, client (the inspection API's client),
  loadtest (`make emulator-bench`)
"""

from devkit.emulator.app import Emulator, EmulatorServer
from devkit.emulator.settings import Settings

__all__ = ["Emulator", "EmulatorServer", "Settings"]
