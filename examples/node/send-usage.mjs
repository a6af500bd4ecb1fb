// Sends usage events to Meter Relay's usage queue with the AWS SDK for JavaScript v3.
//
//   npm ci
//   QUEUE_URL=https://sqs.<region>.amazonaws.com/<account>/<stack>-usage node send-usage.mjs
//
// QUEUE_URL is the stack's `UsageQueueUrl` output; the role needs sqs:SendMessage on the queue
// (the stack's `ProducerPolicyArn`). Credentials, region and AWS_ENDPOINT_URL come from the SDK's
// usual chain. Prints what was sent and what was not, as JSON; exits 1 if anything was not.

import { SendMessageBatchCommand, SQSClient } from "@aws-sdk/client-sqs";
import { fileURLToPath } from "node:url";
import { batches, messageBodies, usageEvent } from "./usage-messages.mjs";

const MAX_ATTEMPTS = 5;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Sends the bodies, ten a call. SQS can refuse single entries of a batch: those it may take
 * later (SenderFault false) are sent again with backoff, the others are reported. The SDK
 * itself retries whole calls that fail (throttling, 5xx, timeouts).
 */
export async function sendBodies(sqs, queueUrl, bodies, { baseDelayMs = 100 } = {}) {
  const report = { sent: [], failed: [] };
  for (const batch of batches(bodies)) {
    let pending = batch.map((body, i) => ({ Id: `m${i}`, MessageBody: body }));
    let lastError = "not sent";
    for (let attempt = 0; attempt < MAX_ATTEMPTS && pending.length; attempt++) {
      if (attempt) await sleep(Math.random() * baseDelayMs * 2 ** attempt);
      let answer;
      try {
        const command = new SendMessageBatchCommand({ QueueUrl: queueUrl, Entries: pending });
        answer = await sqs.send(command);
      } catch (error) {
        lastError = `${error.name}: ${error.message}`;
        continue;
      }
      const byId = new Map(pending.map((entry) => [entry.Id, entry]));
      for (const ok of answer.Successful ?? []) {
        report.sent.push({ messageId: ok.MessageId, body: byId.get(ok.Id).MessageBody });
      }
      const retry = [];
      for (const failure of answer.Failed ?? []) {
        const reason = `${failure.Code}: ${failure.Message ?? ""}`;
        if (failure.SenderFault) {
          report.failed.push({ body: byId.get(failure.Id).MessageBody, reason }); // never taken
        } else {
          retry.push(byId.get(failure.Id));
          lastError = reason;
        }
      }
      pending = retry;
    }
    for (const entry of pending) report.failed.push({ body: entry.MessageBody, reason: lastError });
  }
  return report;
}

async function main() {
  const queueUrl = process.env.QUEUE_URL;
  if (!queueUrl) throw new Error("set QUEUE_URL to the stack's UsageQueueUrl output");
  // what a service would have counted: here, 25 API calls of three customers
  const events = Array.from({ length: 25 }, (_, i) =>
    usageEvent({
      eventName: "api_requests",
      customer: `cus_example${i % 3}`,
      value: 1 + (i % 4),
      identifier: `node-example-${i}`,
      timestamp: new Date(),
    }),
  );
  const { bodies, tooBig } = messageBodies(events, 10);
  const report = await sendBodies(new SQSClient({}), queueUrl, bodies);
  report.failed.push(...tooBig.map((body) => ({ body, reason: "MessageTooLong" })));
  console.log(JSON.stringify(report));
  if (report.failed.length) process.exitCode = 1;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await main();
}
