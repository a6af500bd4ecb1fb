"""The ledger's lines as the forwarder splices them (ledger.ledger_text): up to 100 events a line,
of meters that read the same payload keys; each event must read back as built as an object
would, whatever the producer's text, the message id or the meter's payload keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meter_relay.events import MeterEvent, MeterKeys, ValidationRules, stream_body
from meter_relay.ledger import (
    EVENTS_PER_LINE,
    compress,
    decode,
    decompress,
    encode_events,
    encode_message_ids,
    ledger_text,
    line_of,
    without_lone_surrogates,
)
from meter_relay.ledger_store import event_body

AT = datetime(2026, 12, 6, 1, 2, 3, 456000, tzinfo=UTC)
RULES = ValidationRules(meter_keys={"searches": MeterKeys("account", "calls")})


def meter_event(
    name: str, payload: dict[str, str], identifier: str, text: str | None
) -> MeterEvent:
    event = MeterEvent(name, payload, identifier, "2026-12-06T01:00:00Z")
    event.source = text
    return event


def stripe_text(event: MeterEvent, **dumps: Any) -> str:
    return json.dumps(event.to_stripe(), **dumps)


def read_back(text: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.decode().split("\n") if line]


def sent_events(text: bytes) -> list[dict[str, Any]]:
    return [event for line in read_back(text) for event in line["events"]]


def test_a_line_is_the_event_as_sent_with_its_meters_keys_and_where_it_came_from() -> None:
    plain = meter_event("api_requests", {"stripe_customer_id": "cus_a", "value": "3"}, "e-1", None)
    plain.source = stripe_text(plain, separators=(",", ":"))
    search = meter_event(
        "searches", {"account": "cus_b", "calls": "4", "region": "eu"}, "e-2", None
    )
    search.source = stripe_text(search)  # spaced, as json.dumps writes it: still one line
    text = ledger_text([plain, search], ["m-1", "m-2"], RULES, AT, "req-1")

    first, second = decode(compress(text))
    assert (first.identifier, first.customer, first.value) == ("e-1", "cus_a", "3")
    assert (first.delivered_at, first.request_id, first.message_id) == (
        "2026-12-06T01:02:03.456Z",
        "req-1",
        "m-1",
    )
    assert (second.customer_key, second.value_key) == ("account", "calls")
    assert (second.customer, second.value) == ("cus_b", "4")
    assert second.event.payload == search.payload  # the payload as sent, every key


def test_a_producers_text_with_line_breaks_is_encoded_not_spliced() -> None:
    """A pretty-printed body is sent as it is, but a line break inside a line would split it."""
    pretty = meter_event("api_requests", {"stripe_customer_id": "cus_a", "value": "3"}, "e-1", None)
    pretty.source = stripe_text(pretty, indent=2)
    windows = meter_event(
        "api_requests", {"stripe_customer_id": "cus_b", "value": "4"}, "e-2", None
    )
    windows.source = stripe_text(windows).replace(", ", ",\r\n")
    plain = meter_event("api_requests", {"stripe_customer_id": "cus_c", "value": "5"}, "e-3", None)
    plain.source = stripe_text(plain)
    text = ledger_text([pretty, windows, plain], ["m-1", "m-2", "m-3"], RULES, AT, "req-1")
    assert text.count(b"\n") == 1
    assert b"\r" not in text
    assert sent_events(text) == [pretty.to_stripe(), windows.to_stripe(), plain.to_stripe()]
    assert plain.source.encode() in text  # a one-line text is kept as it is, beside them


def test_a_line_holds_a_stream_calls_worth_of_events_of_the_same_payload_keys() -> None:
    """Lines of 100 events at most; a meter with other payload keys starts a line of its own."""
    names = ["api_requests"] * 150 + ["searches"] * 3 + ["api_requests"] * 2
    events = [
        meter_event(name, dict.fromkeys(("stripe_customer_id", "account"), f"c{n}"), f"e{n}", None)
        for n, name in enumerate(names)
    ]
    message_ids = [f"m-{n}" for n in range(len(events))]
    text = ledger_text(events, message_ids, RULES, AT, "req-1")
    lines = read_back(text)
    assert [len(line["events"]) for line in lines] == [EVENTS_PER_LINE, 50, 3, 2]
    assert [line["customer_key"] for line in lines] == [
        "stripe_customer_id",
        "stripe_customer_id",
        "account",
        "stripe_customer_id",
    ]
    assert [line["message_ids"] for line in lines] == [
        message_ids[:100],
        message_ids[100:150],
        message_ids[150:153],
        message_ids[153:],
    ]
    assert [line.message_id for line in decode(compress(text))] == message_ids
    assert [line.identifier for line in decode(compress(text))] == [e.identifier for e in events]


def test_events_built_as_objects_are_written_in_the_forwarders_lines() -> None:
    """What the other writers (tests, local tools) put reads back as what the forwarder
    writes."""
    events = [
        meter_event("searches", {"account": f"c{n}", "calls": "1"}, f"e{n}", None)
        for n in range(130)
    ]
    keys = RULES.keys_for("searches")
    built = [
        line_of(e, keys, "2026-12-06T01:02:03.456Z", f"m-{n}", "req-1")
        for n, e in enumerate(events)
    ]
    written = encode_events(built)
    assert decompress(written) == ledger_text(
        events, [f"m-{n}" for n in range(130)], RULES, AT, "req-1"
    )
    assert decode(written) == built


def test_message_ids_and_keys_that_need_escaping_are_escaped() -> None:
    event = meter_event("odd", {'cus"t': "cus_a", "v\\": "3"}, "e-1", None)
    rules = ValidationRules(meter_keys={"odd": MeterKeys('cus"t', "v\\")})
    text = ledger_text([event], ['m-"1"\n'], rules, AT, 're"q')
    (line,) = decode(compress(text))
    assert (line.message_id, line.request_id) == ('m-"1"\n', 're"q')
    assert (line.customer, line.value) == ("cus_a", "3")


def test_nothing_delivered_is_nothing_to_write() -> None:
    assert ledger_text([], [], RULES, AT, "req-1") == b""


texts = st.text(min_size=1, max_size=12)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["api_requests", "searches"]),
            texts,
            texts,
            texts,
            st.dictionaries(texts, texts, max_size=2),
            st.sampled_from(["none", "compact", "spaced", "indented"]),
            texts,
        ),
        max_size=8,
    ),
    st.sets(st.sampled_from(["api_requests", "searches", "other"])),
)
def test_spliced_lines_read_back_as_lines_built_as_objects(
    rows: list[tuple],  # type: ignore[type-arg]
    more_names: set[str],
) -> None:
    """And the same bytes when the events' names are given (the judge's, a superset) instead
    of read from the events: one head for meters that share their keys, each event's own
    where they differ."""
    events, message_ids, expected = [], [], []
    for name, identifier, customer, value, others, form, message_id in rows:
        keys = RULES.keys_for(name)
        payload = {**others, keys.customer_key: customer, keys.value_key: value}
        event = meter_event(name, payload, identifier, None)
        if form != "none":
            spacing: dict[str, dict[str, Any]] = {
                "compact": {"separators": (",", ":")},
                "spaced": {},
                "indented": {"indent": 1},
            }
            event.source = stripe_text(event, **spacing[form])
        events.append(event)
        message_ids.append(message_id)
        expected.append(line_of(event, keys, "2026-12-06T01:02:03.456Z", message_id, "req-1"))
    text = ledger_text(events, message_ids, RULES, AT, "req-1")
    assert all(1 <= len(line["events"]) <= EVENTS_PER_LINE for line in read_back(text))
    assert decode(compress(text)) == expected
    names = {event.event_name for event in events} | more_names
    assert ledger_text(events, message_ids, RULES, AT, "req-1", names) == text
    # and the same when the texts are given (the batch's bodies) instead of read from events
    given = [event.sent_text() for event in events]
    assert ledger_text(events, message_ids, RULES, AT, "req-1", names, given) == text


def test_a_lone_surrogate_becomes_its_escape() -> None:
    event = meter_event(
        "api_requests", {"stripe_customer_id": "cus_\udc80", "value": "3"}, "e", None
    )
    event.source = stripe_text(event, ensure_ascii=False)  # the character itself, unescaped
    assert "\udc80" in event.source
    text = ledger_text([event], ["m-1"], RULES, AT, "req-1")
    assert decompress(compress(text)) == text
    (sent,) = sent_events(text)
    assert sent["payload"]["stripe_customer_id"] == "cus_\udc80"


def test_an_object_with_a_lone_surrogate_reads_back_as_it_was_sent() -> None:
    """msgspec refuses a lone surrogate's escape: the object's other events must not be lost
    with it (trace, the reported events' bodies)."""
    odd = meter_event("api_requests", {"stripe_customer_id": "cus_\udc80", "value": "3"}, "e", None)
    plain = meter_event("api_requests", {"stripe_customer_id": "cus_a", "value": "4"}, "f", None)
    text = ledger_text([odd, plain], ["m-1", "m-2"], RULES, AT, "req-1")

    first, second = decode(compress(text))

    assert (first.customer, first.identifier, second.customer) == ("cus_\udc80", "e", "cus_a")
    assert event_body(first) == odd.stripe_text()
    assert json.loads(event_body(first)) == odd.to_stripe()


def test_lines_built_as_objects_take_a_lone_surrogate_too() -> None:
    """What the other writers put (a sync replay's events among them) holds an event as sent,
    a lone surrogate included, as the forwarder's lines do."""
    odd = meter_event("api_requests", {"stripe_customer_id": "cus_\udc80", "value": "3"}, "e", None)
    line = line_of(odd, MeterKeys(), "2026-12-06T01:02:03.456Z", "m-1", "sync-replay-1")

    (back,) = decode(encode_events([line]))

    assert (back.customer, back.request_id) == ("cus_\udc80", "sync-replay-1")


@pytest.mark.parametrize(
    ("escaped", "readable"),
    [
        ("cus_\\udc80", "cus_\\ufffd"),  # a lone low surrogate
        ("a\\ud800b", "a\\ufffdb"),  # a lone high one
        ("\\ud800\\ud800\\udc00", "\\ufffd\\ud800\\udc00"),  # a lone one, then a pair
        ("\\ud83d\\ude00", "\\ud83d\\ude00"),  # a pair: U+1F600, kept
        ("\\\\ud800", "\\\\ud800"),  # an escaped backslash, then text: no escape at all
        ("\\\\\\ud800", "\\\\\\ufffd"),  # an escaped backslash, then a lone surrogate
        ('\\u00e9\\n\\"', '\\u00e9\\n\\"'),  # other escapes, kept
    ],
)
def test_duckdb_reads_a_lone_surrogate_as_the_replacement_character(
    escaped: str, readable: str
) -> None:
    data = compress(f'{{"customer":"{escaped}"}}\n{{"customer":"cus_b"}}\n'.encode())
    assert decompress(without_lone_surrogates(data)).decode() == (
        f'{{"customer":"{readable}"}}\n{{"customer":"cus_b"}}\n'
    )


def test_an_object_without_a_lone_surrogate_is_read_as_it_is() -> None:
    data = compress(b'{"customer":"\\ud83d\\ude00 \\u00e9"}\n')
    assert without_lone_surrogates(data) is data


@given(
    st.lists(
        st.characters(codec=None, min_codepoint=0xD7F0, max_codepoint=0xE010)
        | st.sampled_from(["\\", "u", "d800", "a", "\U0001f600"])
    )
)
def test_what_duckdb_reads_is_the_text_with_each_lone_surrogate_replaced(
    parts: list[str],
) -> None:
    text = "".join(parts)
    data = compress((json.dumps({"customer": text}) + "\n").encode())
    readable = decompress(without_lone_surrogates(data))
    expected = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert msgspec.json.decode(readable)["customer"] == expected


def test_events_that_kept_no_text_are_written_as_the_stream_call_encoded_them() -> None:
    """An envelope's events keep no text: their line carries msgspec's encoding, which is also
    the stream call's, byte for byte."""
    events = [
        meter_event(
            "api_requests", {"stripe_customer_id": f"cus_{n}", "value": "3"}, f"e-{n}", None
        )
        for n in range(3)
    ]
    text = ledger_text(events, ["m-1", "m-1", "m-1"], RULES, AT, "req-1")
    assert event_texts_of(text) == [stream_body(events).decode()[len('{"events":[') : -2]]
    assert sent_events(text) == [event.to_stripe() for event in events]


def test_a_lone_surrogate_in_an_event_without_its_text_becomes_its_escape() -> None:
    odd = meter_event("api_requests", {"stripe_customer_id": "cus_\udc80", "value": "3"}, "e", None)
    plain = meter_event("api_requests", {"stripe_customer_id": "cus_a", "value": "3"}, "f", None)
    text = ledger_text([odd, plain], ["m-1", "m-2"], RULES, AT, "req-1")
    first, second = sent_events(text)
    assert first["payload"]["stripe_customer_id"] == "cus_\udc80"
    assert second == plain.to_stripe()


def event_texts_of(ledger: bytes) -> list[str]:
    """Each line's events, as the text the line holds (the last field of the line, inside its
    brackets). Lines end at "\n" alone, as JSON Lines readers split them (str.splitlines also
    splits at U+0085 and U+2028, which a text may hold as they are)."""
    marker = '"],"events":['
    lines = ledger.decode().split("\n")[:-1]
    return [line[line.index(marker) + len(marker) : -2] for line in lines]


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=6),  # anything a payload holds, non-ASCII included
            st.sampled_from(["none", "compact", "ascii"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_the_ledger_holds_each_event_as_its_stream_call_sent_it(
    rows: list[tuple[str, str]],
) -> None:
    """Single-event messages (their own texts) and an envelope's events (none) in one batch:
    the ledger's texts, joined, are the stream call's body byte for byte."""
    events = []
    for n, (customer, form) in enumerate(rows):
        event = meter_event(
            "api_requests", {"stripe_customer_id": customer, "value": "1"}, f"e{n}", None
        )
        if form != "none":
            event.source = stripe_text(event, separators=(",", ":"), ensure_ascii=form == "ascii")
        events.append(event)
    ledger = ledger_text(events, [f"m-{n}" for n in range(len(events))], RULES, AT, "req-1")
    body = stream_body(events)
    assert body == ('{"events":[' + ",".join(event_texts_of(ledger)) + "]}").encode()
    assert sent_events(ledger) == [e.to_stripe() for e in events]


@given(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=12))
def test_an_envelopes_events_keep_no_text_and_the_ledger_writes_what_their_call_sent(
    customers: list[str],
) -> None:
    """Events without a text of their own (an envelope's) keep none after their stream call:
    the ledger splices the call's body, and when it cannot (the calls not given), encodes the
    events again to the same lines."""
    events = [
        meter_event("api_requests", {"stripe_customer_id": c, "value": "1"}, f"e{n}", None)
        for n, c in enumerate(customers)
    ]
    message_ids = [f"m-{n}" for n in range(len(customers))]

    body = stream_body(events)

    assert all(event.source is None for event in events)
    assert json.loads(body) == {"events": [event.to_stripe() for event in events]}
    spliced = ledger_text(
        events, message_ids, RULES, AT, "req-1", calls=[(range(len(events)), body)]
    )
    encoded_again = ledger_text(events, message_ids, RULES, AT, "req-1")
    assert spliced == encoded_again
    assert spliced.endswith(b"," + body[1:] + b"\n")


def test_texts_given_must_be_one_per_event() -> None:
    event = meter_event("api_requests", {"stripe_customer_id": "c", "value": "1"}, "e-1", None)
    with pytest.raises(ValueError, match="text"):
        ledger_text([event], ["m-1"], RULES, AT, "req-1", None, [])


@given(
    st.lists(st.sampled_from(["compact", "spaced", "none", "surrogate"]), min_size=1, max_size=60),
    st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=20),
)
def test_a_line_per_call_holds_the_calls_body_as_sent(forms: list[str], sizes: list[int]) -> None:
    """The calls' bodies (the delivery's, in the order of their positions) end their lines as
    they are; the events read back as from their texts."""
    events = []
    for n, form in enumerate(forms):
        customer = "cus_\udc80" if form == "surrogate" else f"cus_{n}"
        event = meter_event(
            "api_requests", {"stripe_customer_id": customer, "value": "1"}, f"e{n}", None
        )
        if form in ("compact", "surrogate"):
            event.source = stripe_text(event, separators=(",", ":"), ensure_ascii=False)
        elif form == "spaced":
            event.source = stripe_text(event)
        events.append(event)
    parts, start = [], 0
    for size in sizes:
        if start < len(events):
            parts.append(range(start, min(start + size, len(events))))
            start = parts[-1].stop
    if start < len(events):
        parts.append(range(start, len(events)))
    calls = [(part, stream_body(events[part.start : part.stop])) for part in parts]
    message_ids = [f"m-{n}" for n in range(len(events))]

    text = ledger_text(events, message_ids, RULES, AT, "req-1", calls=calls)

    lines = read_back(text)
    assert [len(line["events"]) for line in lines] == [len(part) for part in parts]
    assert [line["message_ids"] for line in lines] == [message_ids[p.start : p.stop] for p in parts]
    for line, (_, body) in zip(text.split(b"\n"), calls, strict=False):
        assert line.endswith(b"," + body[1:])
    from_texts = ledger_text(events, message_ids, RULES, AT, "req-1")
    assert sent_events(text) == sent_events(from_texts) == [e.to_stripe() for e in events]


def test_a_calls_body_with_a_line_break_is_written_from_its_events() -> None:
    pretty = meter_event("api_requests", {"stripe_customer_id": "cus_a", "value": "3"}, "e-1", None)
    pretty.source = stripe_text(pretty, indent=2)
    plain = meter_event("api_requests", {"stripe_customer_id": "cus_b", "value": "4"}, "e-2", None)
    plain.source = stripe_text(plain)
    events = [pretty, plain]
    calls = [(range(0, 1), stream_body(events[:1])), (range(1, 2), stream_body(events[1:]))]
    assert b"\n" in calls[0][1]

    text = ledger_text(events, ["m-1", "m-2"], RULES, AT, "req-1", calls=calls)

    assert text.count(b"\n") == 2
    assert sent_events(text) == [pretty.to_stripe(), plain.to_stripe()]
    assert text.split(b"\n")[1].endswith(b"," + calls[1][1][1:])


@pytest.mark.parametrize(
    "parts",
    [[range(0, 2)], [range(0, 1), range(2, 3)], [range(1, 3), range(0, 1)]],
    ids=["short", "a-gap", "out-of-order"],
)
def test_calls_that_do_not_cover_the_events_in_order_are_not_used(parts: list[range]) -> None:
    events = [
        meter_event("api_requests", {"stripe_customer_id": f"c{n}", "value": "1"}, f"e{n}", None)
        for n in range(3)
    ]
    calls = [(part, b'{"events":[{"not":"these"}]}') for part in parts]
    ids = ["m-0", "m-1", "m-2"]
    assert ledger_text(events, ids, RULES, AT, "r", calls=calls) == ledger_text(
        events, ids, RULES, AT, "r"
    )


def test_calls_of_meters_with_other_payload_keys_are_written_from_their_events() -> None:
    """A line holds one meter's keys: a call mixing meters that read others is not a line."""
    events = [
        meter_event("api_requests", {"stripe_customer_id": "c", "value": "1"}, "e-1", None),
        meter_event("searches", {"account": "c", "calls": "2"}, "e-2", None),
    ]
    calls = [(range(0, 2), stream_body(events))]
    text = ledger_text(events, ["m-1", "m-2"], RULES, AT, "r", calls=calls)
    assert text == ledger_text(events, ["m-1", "m-2"], RULES, AT, "r")
    assert [line["customer_key"] for line in read_back(text)] == ["stripe_customer_id", "account"]


@given(
    st.integers(min_value=1, max_value=3 * EVENTS_PER_LINE + 7),
    st.lists(st.integers(min_value=1, max_value=EVENTS_PER_LINE), min_size=1, max_size=8),
    st.sampled_from(["one-meter", "two-meters", "no-calls"]),
    st.booleans(),
)
def test_message_ids_encoded_while_read_make_the_same_lines(
    count: int, sizes: list[int], mix: str, surrogate: bool
) -> None:
    """The forwarder encodes a batch's message ids while it reads them, a line's worth at a
    time (encode_message_ids): a line whose events are one of those spans takes its encoding,
    any other (a split call, another meter's run) is encoded then; the lines are the same."""
    events = []
    for n in range(count):
        if mix == "two-meters" and n % 7 == 3:
            event = meter_event("searches", {"account": f"a{n}", "calls": "2"}, f"e{n}", None)
        else:
            payload = {"stripe_customer_id": f"c{n}", "value": "1"}
            event = meter_event("api_requests", payload, f"e{n}", None)
        event.source = stripe_text(event)
        events.append(event)
    message_ids = [f"m-{n}" for n in range(count)]
    if surrogate:
        message_ids[count // 2] = "m-\udc80"
    parts, start = [], 0
    for size in sizes * (count // sum(sizes) + 1):
        if start < count:
            parts.append(range(start, min(start + size, count)))
            start = parts[-1].stop
    calls = None
    if mix != "no-calls":
        calls = [(part, stream_body(events[part.start : part.stop])) for part in parts]

    def text(encoded: list[bytes] | None) -> bytes:
        return ledger_text(events, message_ids, RULES, AT, "r", calls=calls, encoded_ids=encoded)

    plain = text(None)
    assert text(encode_message_ids(message_ids)) == plain
    assert text(encode_message_ids(message_ids)[:-1]) == plain  # not one per span: not used
    lines = read_back(plain)
    assert [i for line in lines for i in line["message_ids"]] == message_ids


def test_encoded_message_ids_are_a_lines_worth_at_a_time() -> None:
    ids = [f"m-{n}" for n in range(2 * EVENTS_PER_LINE + 1)]
    encoded = encode_message_ids(ids)
    assert [json.loads(part) for part in encoded] == [
        ids[:EVENTS_PER_LINE],
        ids[EVENTS_PER_LINE : 2 * EVENTS_PER_LINE],
        ids[-1:],
    ]
