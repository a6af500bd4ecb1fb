"""Dead-letter operations: read the DLQ, select, correct, redrive, replay, cancel and discard.

What sits in the dead-letter queue is money not yet billed, or billed wrongly. The modules, by
concern:

- `reading`: what a DLQ message holds (both kinds: the forwarder's letters, and whole messages
  SQS moved after maxReceiveCount), read with the forwarder's own parser;
- `scan`: the reader, one pass over the queue in windows, under SQS's in-flight limit;
- `selection`: filters (which messages, which events) and fixes (corrections before a replay);
- `letters`: what of a message stays in the DLQ, written as the forwarder writes letters;
- `resend`: sending bodies to the usage queue in parallel batches;
- `runs`: a consuming pass (windows, deadline, --max) and what it reports;
- `redrive`, `replay`, `cancel`, `discard`: the operations;
- `toolkit`: the tools built from one `config.ToolsConfig`.

Principles kept throughout: identifiers never change; a message leaves the DLQ only after what
it carries is safely elsewhere (on the usage queue, accepted by Stripe, or written to the
operator's discard file); a dry run changes nothing; a read-only pass gives every message back.
"""

from meter_relay.dlq.reading import DlqMessage, read_message

__all__ = ["DlqMessage", "read_message"]  # what devkit's local stack reads letters with
