package example;

import java.time.Instant;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ThreadLocalRandom;
import software.amazon.awssdk.core.exception.SdkException;
import software.amazon.awssdk.services.sqs.SqsClient;
import software.amazon.awssdk.services.sqs.model.BatchResultErrorEntry;
import software.amazon.awssdk.services.sqs.model.SendMessageBatchRequestEntry;
import software.amazon.awssdk.services.sqs.model.SendMessageBatchResponse;
import software.amazon.awssdk.services.sqs.model.SendMessageBatchResultEntry;

/**
 * Sends usage events to Meter Relay's usage queue with the AWS SDK for Java 2.x.
 *
 * <pre>
 * QUEUE_URL=https://sqs.REGION.amazonaws.com/ACCOUNT/STACK-usage mvn -q compile exec:java
 * </pre>
 *
 * <p>QUEUE_URL is the stack's UsageQueueUrl output; the role needs sqs:SendMessage on the queue
 * (the stack's ProducerPolicyArn). Credentials, region and AWS_ENDPOINT_URL come from the SDK's
 * usual chain. The bodies come from {@link UsageMessages}; this class only sends them.
 */
public final class SendUsage {
    private static final int MAX_ATTEMPTS = 5;
    private static final long BASE_DELAY_MS = 100;

    /** A body SQS did not take, and why. */
    public record Failure(String body, String reason) {}

    /** Message ids of the bodies SQS took, and the bodies it did not. */
    public record Report(List<String> sent, List<Failure> failed) {}

    private SendUsage() {}

    /**
     * Sends the bodies, ten a call. SQS can refuse single entries of a batch: those it may take
     * later (senderFault false) are sent again with backoff, the others are reported. The SDK
     * itself retries whole calls that fail (throttling, 5xx, timeouts).
     */
    public static Report send(SqsClient sqs, String queueUrl, List<String> bodies)
            throws InterruptedException {
        Report report = new Report(new ArrayList<>(), new ArrayList<>());
        for (List<String> batch : UsageMessages.batches(bodies)) {
            Map<String, String> pending = new LinkedHashMap<>();
            for (int i = 0; i < batch.size(); i++) {
                pending.put("m" + i, batch.get(i));
            }
            String lastError = "not sent";
            for (int attempt = 0; attempt < MAX_ATTEMPTS && !pending.isEmpty(); attempt++) {
                if (attempt > 0) {
                    long ceiling = BASE_DELAY_MS << attempt;
                    Thread.sleep(ThreadLocalRandom.current().nextLong(ceiling));
                }
                List<SendMessageBatchRequestEntry> entries = new ArrayList<>();
                pending.forEach((id, body) -> entries.add(
                        SendMessageBatchRequestEntry.builder().id(id).messageBody(body).build()));
                SendMessageBatchResponse answer;
                try {
                    answer = sqs.sendMessageBatch(b -> b.queueUrl(queueUrl).entries(entries));
                } catch (SdkException error) {
                    lastError = error.getClass().getSimpleName() + ": " + error.getMessage();
                    continue;
                }
                for (SendMessageBatchResultEntry ok : answer.successful()) {
                    pending.remove(ok.id());
                    report.sent().add(ok.messageId());
                }
                for (BatchResultErrorEntry failure : answer.failed()) {
                    String reason = failure.code() + ": " + failure.message();
                    if (Boolean.TRUE.equals(failure.senderFault())) { // SQS will never take it
                        report.failed().add(new Failure(pending.remove(failure.id()), reason));
                    } else {
                        lastError = reason;
                    }
                }
            }
            for (String body : pending.values()) {
                report.failed().add(new Failure(body, lastError));
            }
        }
        return report;
    }

    public static void main(String[] args) throws InterruptedException {
        String queueUrl = System.getenv("QUEUE_URL");
        if (queueUrl == null || queueUrl.isBlank()) {
            throw new IllegalStateException("set QUEUE_URL to the stack's UsageQueueUrl output");
        }
        // what a service would have counted: here, 25 API calls of three customers
        List<UsageMessages.UsageEvent> events = new ArrayList<>();
        for (int i = 0; i < 25; i++) {
            String customer = "cus_example" + i % 3;
            events.add(new UsageMessages.UsageEvent(
                    "api_requests", customer, 1 + i % 4, "java-example-" + i, Instant.now()));
        }
        UsageMessages.Bodies bodies = UsageMessages.messageBodies(events, 10);
        Report report;
        try (SqsClient sqs = SqsClient.create()) {
            report = send(sqs, queueUrl, bodies.bodies());
        }
        bodies.tooBig().forEach(body -> report.failed().add(new Failure(body, "MessageTooLong")));
        System.out.printf(
                "sent %d messages, %d not sent%n", report.sent().size(), report.failed().size());
        report.failed().forEach(failure -> System.out.println("not sent: " + failure.reason()));
        if (!report.failed().isEmpty()) {
            System.exit(1);
        }
    }
}
