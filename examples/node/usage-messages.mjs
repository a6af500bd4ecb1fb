// Message bodies for Meter Relay's usage queue: no dependencies, no AWS calls.
//
// The contract is schema/message.schema.json: one event in Stripe's v2 shape
// ({event_name, payload, identifier?, timestamp?}) or an envelope {"events": [...]} of many.
// Envelopes are how volume gets cheap: SQS bills per message, not per event.
//
//   node usage-messages.mjs    prints sample bodies, one a line (tests validate them)

import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";

// the largest message sent: SQS's 256 KiB, less room for what its dead letter would add
export const MAX_MESSAGE_BYTES = 248 * 1024;
export const MAX_BATCH_ENTRIES = 10; // SendMessageBatch: entries a call,
export const MAX_BATCH_BYTES = 256 * 1024; // and their bodies together
const ENVELOPE_BYTES = MAX_MESSAGE_BYTES / 2; // so a batch takes at least two envelopes

/**
 * One usage event. `identifier` makes a retry count once: give one you can reproduce (an order
 * or request id); without one, a random one is given here, before the first send, so a batch
 * sent again after a lost answer carries the same identifiers. `timestamp`: when the usage
 * happened (RFC 3339, epoch seconds or a Date); left out, now (so that a resend carries the
 * same one). `value`: a number goes as a JSON number, which the forwarder writes as plain
 * decimal text; give a string or a BigInt for more digits than a double holds.
 */
export function usageEvent({ eventName, customer, value, identifier, timestamp }) {
  const at = timestamp ?? new Date();
  return {
    event_name: eventName,
    payload: {
      stripe_customer_id: customer,
      value: typeof value === "bigint" ? value.toString() : value,
    },
    identifier: identifier ?? randomUUID(),
    timestamp: at instanceof Date ? at.toISOString() : at,
  };
}

/** One event as itself; several as an envelope. */
export function messageBody(events) {
  return JSON.stringify(events.length === 1 ? events[0] : { events });
}

const bytes = (text) => Buffer.byteLength(text, "utf8");

/** Consecutive groups of at most `maxItems` and `maxBytes` (a lone item may exceed). */
function groups(items, sizeOf, maxItems, maxBytes) {
  const result = [];
  let group = [];
  let size = 0;
  for (const item of items) {
    const itemSize = sizeOf(item);
    if (group.length && (group.length === maxItems || size + itemSize > maxBytes)) {
      result.push(group);
      group = [];
      size = 0;
    }
    group.push(item);
    size += itemSize;
  }
  if (group.length) result.push(group);
  return result;
}

/**
 * The events as message bodies, `envelopeSize` events (1 to 1000) to a message at most.
 * A body over MAX_MESSAGE_BYTES (one huge event) is returned in `tooBig`, not sent.
 */
export function messageBodies(events, envelopeSize = 100) {
  if (!(envelopeSize >= 1 && envelopeSize <= 1000)) {
    throw new RangeError("envelopeSize must be between 1 and 1000");
  }
  const eventSize = (event) => bytes(JSON.stringify(event)) + 1; // and its comma
  const bodies = groups(events, eventSize, envelopeSize, ENVELOPE_BYTES).map(messageBody);
  return {
    bodies: bodies.filter((body) => bytes(body) <= MAX_MESSAGE_BYTES),
    tooBig: bodies.filter((body) => bytes(body) > MAX_MESSAGE_BYTES),
  };
}

/** Bodies cut into SendMessageBatch calls: at most 10 entries and 256 KiB a call. */
export function batches(bodies) {
  return groups(bodies, bytes, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES);
}

/** Samples: events with and without identifiers and timestamps, single and enveloped. */
export function sampleBodies() {
  const at = new Date("2026-06-01T12:00:00Z");
  const customer = "cus_NciAYcXfLnqBoz";
  const events = [
    usageEvent({
      eventName: "api_requests", customer, value: 25, identifier: "req_8f2c", timestamp: at,
    }),
    usageEvent({ eventName: "api_requests", customer, value: 1, timestamp: 1780315200 }),
    usageEvent({ eventName: "search_calls", customer: 'cus_"q"\n', value: 12 }),
  ];
  return [messageBody([events[0]]), ...messageBodies(events.slice(1), 2).bodies];
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const body of sampleBodies()) console.log(body);
}
