"""Shared pytest fixtures: moto (AWS), the Stripe emulator and the relay stack, as plugins."""

pytest_plugins = ["tests.plugins.aws", "tests.plugins.stripe_emulator", "tests.plugins.relay"]
