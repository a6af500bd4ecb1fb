// node --test send-usage.test.mjs: the example's sending and cutting, without AWS.
import assert from "node:assert/strict";
import { test } from "node:test";
import { sendBodies } from "./send-usage.mjs";
import { batches, MAX_MESSAGE_BYTES, messageBodies, messageBody, usageEvent } from "./usage-messages.mjs";

/** An SQS client answering from a script (an Error is thrown), recording each call's entry ids. */
function scripted(answers) {
  const calls = [];
  return {
    calls,
    async send(command) {
      calls.push(command.input.Entries.map((entry) => entry.Id));
      const answer = answers.shift();
      if (answer instanceof Error) throw answer;
      return answer;
    },
  };
}

const event = (i, extra = {}) =>
  usageEvent({ eventName: "e", customer: "cus_1", value: 1, identifier: `e-${i}`, ...extra });

test("entries refused for now are sent again; refused for good, reported", async () => {
  const sqs = scripted([
    {
      Successful: [{ Id: "m0", MessageId: "id-0" }],
      Failed: [
        { Id: "m1", SenderFault: false, Code: "ServiceUnavailable" },
        { Id: "m2", SenderFault: true, Code: "InvalidMessageContents", Message: "bad" },
      ],
    },
    new Error("socket hang up"),
    { Successful: [{ Id: "m1", MessageId: "id-1" }], Failed: [] },
  ]);
  const report = await sendBodies(sqs, "https://queue", ["a", "b", "c"], { baseDelayMs: 1 });
  assert.deepEqual(sqs.calls, [["m0", "m1", "m2"], ["m1"], ["m1"]]);
  assert.deepEqual(report.sent, [
    { messageId: "id-0", body: "a" },
    { messageId: "id-1", body: "b" },
  ]);
  assert.deepEqual(report.failed, [{ body: "c", reason: "InvalidMessageContents: bad" }]);
});

test("gives up after five attempts, with the last reason", async () => {
  const failure = { Id: "m0", SenderFault: false, Code: "InternalError" };
  const refused = { Successful: [], Failed: [failure] };
  const sqs = scripted(Array.from({ length: 5 }, () => structuredClone(refused)));
  const report = await sendBodies(sqs, "https://queue", ["a"], { baseDelayMs: 1 });
  assert.equal(sqs.calls.length, 5);
  assert.deepEqual(report.failed, [{ body: "a", reason: "InternalError: " }]);
});

test("an event too big for any message is set apart; the others go", () => {
  const huge = event(1, { customer: "x".repeat(MAX_MESSAGE_BYTES) });
  const { bodies, tooBig } = messageBodies([event(0), huge, event(2)], 1);
  assert.equal(tooBig.length, 1);
  assert.deepEqual(bodies.map((body) => JSON.parse(body).identifier), ["e-0", "e-2"]);
});

test("envelopes keep to half a message, and calls to ten entries", () => {
  const big = Array.from({ length: 20 }, (_, i) => event(i, { customer: "c".repeat(20_000) }));
  const { bodies } = messageBodies(big, 1000);
  assert.ok(bodies.length > 1);
  assert.ok(bodies.every((body) => Buffer.byteLength(body) <= MAX_MESSAGE_BYTES / 2));
  const small = messageBodies(Array.from({ length: 25 }, (_, i) => event(i)), 1).bodies;
  assert.deepEqual(batches(small).map((batch) => batch.length), [10, 10, 5]);
  assert.throws(() => messageBodies(small, 0), RangeError);
});

test("an event without an identifier gets one before it is sent", () => {
  const [first, second] = [0, 1].map(() => usageEvent({ eventName: "e", customer: "c", value: 2 }));
  assert.match(first.identifier, /^[0-9a-f-]{36}$/);
  assert.notEqual(first.identifier, second.identifier);
  assert.equal(first.payload.value, 2);
  // and a timestamp, so that a resend of the same event is the same event
  assert.match(first.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
});

test("values keep their digits: numbers as JSON numbers, BigInts as their text", () => {
  const body = (value) => JSON.parse(messageBody([usageEvent({ eventName: "e", customer: "c", value })]));
  assert.equal(body(1e21).payload.value, 1e21); // String() would send "1e+21", refused
  assert.equal(body(2n ** 53n + 1n).payload.value, "9007199254740993");
  assert.equal(body("12.5").payload.value, "12.5");
});
