"""Shared pytest fixtures: moto (AWS) and the Stripe emulator, as plugins."""

pytest_plugins = ["tests.plugins.aws", "tests.plugins.stripe_emulator"]
