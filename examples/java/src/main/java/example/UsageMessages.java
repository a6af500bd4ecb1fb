package example;

import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.UUID;
import java.util.function.ToIntFunction;

/**
 * Message bodies for Meter Relay's usage queue: plain Java 17, no dependencies, no AWS calls.
 *
 * <p>The contract is schema/message.schema.json: one event in Stripe's v2 shape ({event_name,
 * payload, identifier?, timestamp?}) or an envelope {"events": [...]} of many. Envelopes are how
 * volume gets cheap: SQS bills per message, not per event. {@link SendUsage} sends the bodies.
 *
 * <pre>java example.UsageMessages              sample bodies, one a line
 * java example.UsageMessages EVENTS SIZE   EVENTS generated events, SIZE to an envelope</pre>
 */
public final class UsageMessages {
    /** The largest message sent: SQS's 256 KiB, less room for what its dead letter adds. */
    public static final int MAX_MESSAGE_BYTES = 248 * 1024;
    /** SendMessageBatch's limits: entries a call, and their bodies together. */
    public static final int MAX_BATCH_ENTRIES = 10;
    public static final int MAX_BATCH_BYTES = 256 * 1024;
    /** An envelope is kept to half a message, so that a batch takes at least two. */
    private static final int ENVELOPE_BYTES = MAX_MESSAGE_BYTES / 2;

    private UsageMessages() {}

    /**
     * One usage event. The identifier makes a retry count once: give one you can reproduce (an
     * order or request id); null gets a random one here, before the first send, so a batch sent
     * again after a lost answer carries the same identifiers. The timestamp says when the usage
     * happened; null means now (to the millisecond), so that a resend carries the same one.
     */
    public record UsageEvent(
            String eventName, String customer, long value, String identifier, Instant timestamp) {
        public UsageEvent {
            Objects.requireNonNull(eventName, "eventName");
            Objects.requireNonNull(customer, "customer");
            if (identifier == null) {
                identifier = UUID.randomUUID().toString();
            }
            if (timestamp == null) {
                timestamp = Instant.now().truncatedTo(ChronoUnit.MILLIS);
            }
        }

        /** The event as JSON, in Stripe's v2 shape (values are strings, as Stripe takes them). */
        public String toJson() {
            StringBuilder json = new StringBuilder("{\"event_name\":").append(quote(eventName));
            json.append(",\"payload\":{\"stripe_customer_id\":").append(quote(customer));
            json.append(",\"value\":").append(quote(Long.toString(value))).append('}');
            json.append(",\"identifier\":").append(quote(identifier));
            if (timestamp != null) {
                json.append(",\"timestamp\":").append(quote(timestamp.toString())); // RFC 3339, UTC
            }
            return json.append('}').toString();
        }
    }

    /** Bodies to send, and bodies too big for any message (one huge event): report those. */
    public record Bodies(List<String> bodies, List<String> tooBig) {}

    /** One event as itself; several as an envelope. */
    public static String messageBody(List<UsageEvent> events) {
        if (events.size() == 1) {
            return events.get(0).toJson();
        }
        List<String> texts = events.stream().map(UsageEvent::toJson).toList();
        return "{\"events\":[" + String.join(",", texts) + "]}";
    }

    /** The events as message bodies, at most {@code envelopeSize} (1 to 1000) to a message. */
    public static Bodies messageBodies(List<UsageEvent> events, int envelopeSize) {
        if (envelopeSize < 1 || envelopeSize > 1000) {
            throw new IllegalArgumentException("envelopeSize must be between 1 and 1000");
        }
        List<String> bodies = new ArrayList<>();
        List<String> tooBig = new ArrayList<>();
        for (List<UsageEvent> group :
                groups(events, e -> bytes(e.toJson()) + 1, envelopeSize, ENVELOPE_BYTES)) {
            String body = messageBody(group);
            (bytes(body) > MAX_MESSAGE_BYTES ? tooBig : bodies).add(body);
        }
        return new Bodies(bodies, tooBig);
    }

    /** Bodies cut into SendMessageBatch calls: at most 10 entries and 256 KiB a call. */
    public static List<List<String>> batches(List<String> bodies) {
        return groups(bodies, UsageMessages::bytes, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES);
    }

    static int bytes(String text) {
        return text.getBytes(StandardCharsets.UTF_8).length;
    }

    /** Consecutive groups of at most maxItems items and maxBytes (a lone item may exceed). */
    static <T> List<List<T>> groups(
            List<T> items, ToIntFunction<T> sizeOf, int maxItems, int maxBytes) {
        List<List<T>> result = new ArrayList<>();
        List<T> group = new ArrayList<>();
        int size = 0;
        for (T item : items) {
            int itemSize = sizeOf.applyAsInt(item);
            if (!group.isEmpty() && (group.size() == maxItems || size + itemSize > maxBytes)) {
                result.add(group);
                group = new ArrayList<>();
                size = 0;
            }
            group.add(item);
            size += itemSize;
        }
        if (!group.isEmpty()) {
            result.add(group);
        }
        return result;
    }

    /** A JSON string: quotes, backslashes and control characters escaped. */
    static String quote(String text) {
        StringBuilder json = new StringBuilder(text.length() + 2).append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '"' -> json.append("\\\"");
                case '\\' -> json.append("\\\\");
                case '\n' -> json.append("\\n");
                case '\r' -> json.append("\\r");
                case '\t' -> json.append("\\t");
                default -> {
                    if (c < 0x20) {
                        json.append(String.format("\\u%04x", (int) c));
                    } else {
                        json.append(c);
                    }
                }
            }
        }
        return json.append('"').toString();
    }

    /** Samples: single and enveloped, with and without identifiers and timestamps. */
    static List<String> sampleBodies() {
        Instant at = Instant.parse("2026-06-01T12:00:00Z");
        String customer = "cus_NciAYcXfLnqBoz";
        UsageEvent first = new UsageEvent("api_requests", customer, 25, "req_8f2c", at);
        List<UsageEvent> more =
                List.of(
                        new UsageEvent("api_requests", customer, 1, null, at.plusMillis(1)),
                        new UsageEvent("search_calls", "cus_\"q\"\n", 12, null, null));
        List<String> bodies = new ArrayList<>(List.of(messageBody(List.of(first))));
        bodies.addAll(messageBodies(more, 2).bodies());
        return bodies;
    }

    public static void main(String[] args) {
        List<String> bodies;
        if (args.length == 2) {
            int count = Integer.parseInt(args[0]);
            List<UsageEvent> events = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                String identifier = i % 3 == 0 ? null : "java-example-" + i;
                String customer = "cus_example" + i % 3;
                Instant now = Instant.now();
                events.add(new UsageEvent("api_requests", customer, 1 + i % 4, identifier, now));
            }
            bodies = messageBodies(events, Integer.parseInt(args[1])).bodies();
        } else {
            bodies = sampleBodies();
        }
        bodies.forEach(System.out::println);
    }
}
