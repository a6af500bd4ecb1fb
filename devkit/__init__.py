"""Local-only tools: the Stripe meter API emulator, the Lambda invocation harness, moto server."""
