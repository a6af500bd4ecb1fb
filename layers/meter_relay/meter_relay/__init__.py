"""Meter Relay's shared library: one module per concern, used by every Lambda function."""

__version__ = "0.1.0"
