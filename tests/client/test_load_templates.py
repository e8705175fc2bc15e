"""`lamina-client load` without a server: ghz templates, durations, sizes, the report's math,
call data and config files."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import grpc
import pytest

from lamina.client._channel import Security
from lamina.client.cli import build_parser, main
from lamina.client.load import LoadError, LoadOptions, RequestData, resolve_method, status_name
from lamina.client.load_cli import merged, read_config, resolve_security
from lamina.client.load_report import CallRecord, Report, histogram, percentile, progress_line
from lamina.client.load_templates import (
    CallContext,
    TemplateError,
    compile_template,
    parse_duration,
    parse_size,
)
from lamina.v1 import embed_pb2 as pb

ROOT = Path(__file__).parents[2]
EMBED = "lamina.v1.EmbedService.Embed"


def context(number: int = 7) -> CallContext:
    return CallContext.now("g0c1w3", number, EMBED, "EmbedRequest", "EmbedResponse")


def test_fields_render_as_ghz_call_data() -> None:
    template = compile_template(
        "{{.RequestNumber}}|{{.FullyQualifiedName}}|{{.MethodName}}|{{.ServiceName}}|"
        "{{.InputName}}|{{.OutputName}}|{{.WorkerID}}|{{ .IsClientStreaming }}"
    )
    assert template.render(context(7)) == (
        "7|lamina.v1.EmbedService.Embed|Embed|EmbedService|EmbedRequest|EmbedResponse|g0c1w3|false"
    )


def test_timestamps_and_the_uuid_are_one_per_request() -> None:
    call = context()
    unix, milli, nano, first, second = (
        compile_template(
            "{{.TimestampUnix}} {{.TimestampUnixMilli}} {{.TimestampUnixNano}} {{.UUID}} {{.UUID}}"
        )
        .render(call)
        .split()
    )
    assert int(unix) == int(nano) // 10**9 and int(milli) == int(nano) // 10**6
    assert first == second == call.uuid and uuid.UUID(first).version == 4
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d",
        compile_template("{{.Timestamp}}").render(call),
    )


def test_functions_draw_fresh_values_at_every_use() -> None:
    a, b = compile_template("{{newUUID}} {{newUUID}}").render(context()).split()
    assert a != b and uuid.UUID(a) and uuid.UUID(b)
    assert re.fullmatch(r"[A-Za-z0-9]{8}", compile_template("{{randomString 8}}").render(context()))
    lengths = {len(compile_template("{{randomString 0}}").render(context())) for _ in range(300)}
    assert min(lengths) >= 2 and max(lengths) <= 16 and len(lengths) > 5
    ints = {int(compile_template("{{randomInt 3 6}}").render(context())) for _ in range(300)}
    assert ints == {3, 4, 5}  # [MIN, MAX), as ghz


def test_literals_comments_and_trim_markers() -> None:
    template = compile_template('{"a": "x {{- /* note */ -}} y", "n": {{.RequestNumber}}}')
    assert template.render(context(2)) == '{"a": "xy", "n": 2}'
    assert compile_template('{"plain": true}').static
    assert not compile_template("{{.UUID}}").static


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{.Nope}}", "unknown template action {{.Nope}}"),
        ("{{upper .MethodName}}", "unknown template action"),
        ("{{randomString x}}", "'x' is not an integer"),
        ("{{randomInt 5 5}}", "randomInt needs MIN < MAX"),
        ("{{.UUID", "unclosed template action"),
    ],
)
def test_templates_ghz_does_not_document_are_refused(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        compile_template(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("2m", 120), ("1h30m", 5400), ("250ms", 0.25), ("1.5s", 1.5), ("10", 10)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10 apples", "-1s", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(TemplateError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MiB", 64 * 2**20), ("42 MB", 42_000_000), ("4mb", 4_000_000), ("1024", 1024),
     ("1KiB", 1024), ("2 GB", 2 * 10**9)],
)  # fmt: skip
def test_message_sizes_as_ghz_reads_them(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_size_is_refused() -> None:
    with pytest.raises(TemplateError, match="invalid size"):
        parse_size("lots")


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (10, 50, 95, 99, 100)] == [10, 50, 95, 99, 100]
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_histogram_spans_fastest_to_slowest_and_counts_every_value() -> None:
    values = sorted([0.010, 0.011, 0.012, 0.020, 0.030, 0.110])
    buckets = histogram(values)
    assert len(buckets) == 11
    assert buckets[0].mark == 0.010 and buckets[-1].mark == 0.110
    assert sum(b.count for b in buckets) == len(values)
    assert sum(b.frequency for b in buckets) == pytest.approx(1.0)


def test_report_counts_every_call_but_latencies_only_of_successes() -> None:
    records = [CallRecord(0.010 * i, "OK") for i in range(1, 9)] + [
        CallRecord(0.001, "NotFound", "rpc error: code = NotFound desc = no model"),
        CallRecord(0.002, "NotFound", "rpc error: code = NotFound desc = no model"),
    ]
    report = Report.of(records, total=2.0)
    assert report.count == 10 and report.rps == 5.0
    assert report.average == pytest.approx((0.36 + 0.003) / 10)
    assert report.fastest == 0.010 and report.slowest == pytest.approx(0.080)
    assert report.status_codes == {"OK": 8, "NotFound": 2}
    assert report.errors == {"rpc error: code = NotFound desc = no model": 2}
    as_json = json.loads(json.dumps(report.to_json()))
    assert as_json["total"] == 2_000_000_000 and as_json["fastest"] == 10_000_000
    assert [d["percentage"] for d in as_json["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert as_json["latencyDistribution"][2]["latency"] == 40_000_000
    text = report.summary()
    assert "Count:        10" in text and "Requests/sec: 5.00" in text
    assert "[OK]        8 responses" in text and "[NotFound]  2 responses" in text
    assert "[2]\trpc error: code = NotFound desc = no model" in text


def test_progress_line() -> None:
    assert progress_line(12.0, 1234, 3) == "12.0s  1,234 calls  102.8 rps  3 errors"


def test_status_names_are_gos() -> None:
    assert status_name(grpc.StatusCode.OK) == "OK"
    assert status_name(grpc.StatusCode.NOT_FOUND) == "NotFound"
    assert status_name(grpc.StatusCode.RESOURCE_EXHAUSTED) == "ResourceExhausted"
    assert status_name(grpc.StatusCode.CANCELLED) == "Canceled"


def test_calls_resolve_through_the_compiled_descriptors() -> None:
    method = resolve_method("lamina.v1.EmbedService/Embed")
    assert method.path == "/lamina.v1.EmbedService/Embed"
    assert method.input_class().DESCRIPTOR.full_name == "lamina.v1.EmbedRequest"
    assert resolve_method("grpc.health.v1.Health.Check").path == "/grpc.health.v1.Health/Check"
    with pytest.raises(LoadError, match=r"unknown call.*lamina\.v1\.EmbedService\.Tokenize"):
        resolve_method("lamina.v1.EmbedService.Nope")
    with pytest.raises(LoadError, match="streaming"):
        resolve_method("grpc.health.v1.Health.Watch")


def test_array_data_goes_round_robin_and_templates_render_per_request() -> None:
    data = RequestData(
        '[{"model": "a", "prompt": {"items": [{"text": {"data": "n={{.RequestNumber}}"}}]}},'
        ' {"model": "b", "layers": [-1, "{{randomInt 1 2}}"]}]',
        resolve_method(EMBED),
    )
    first, second, third = (data.request(context(n)) for n in range(3))
    assert isinstance(first, pb.EmbedRequest) and isinstance(second, pb.EmbedRequest)
    assert isinstance(third, pb.EmbedRequest)
    assert (first.model, second.model, third.model) == ("a", "b", "a")
    assert first.prompt.items[0].text.data == "n=0"
    assert third.prompt.items[0].text.data == "n=2"
    assert list(second.layers) == [-1, 1]


def test_images_travel_as_base64_bytes() -> None:
    data = RequestData(
        '{"prompt": {"items": [{"image": {"data": "iVBORw=="}}]}}', resolve_method(EMBED)
    )
    request = data.request(context())
    assert isinstance(request, pb.EmbedRequest)
    assert request.prompt.items[0].image.data == b"\x89PNG"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "non-empty array"),
        ('{"modle": "x"}', "is not a lamina.v1.EmbedRequest"),
        ('{"layers": ["{{randomString 3}}"]}', "is not a lamina.v1.EmbedRequest"),
    ],
)
def test_bad_call_data_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(LoadError, match=message):
        RequestData(text, resolve_method(EMBED)).request(context())


def test_options_are_checked() -> None:
    with pytest.raises(LoadError, match="connections need at least as many workers"):
        LoadOptions(host="h:1", concurrency=2, connections=4)
    with pytest.raises(LoadError, match="total of at least 1"):
        LoadOptions(host="h:1", total=0)


def test_config_keys_aliases_and_refusals(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"n": 5, "c": 2, "proto": "x.proto", "call": EMBED}))
    assert read_config(config) == {"total": 5, "concurrency": 2, "call": EMBED}
    config.write_text(json.dumps({"skipTLS": True}))
    with pytest.raises(LoadError, match="skipTLS"):
        read_config(config)
    config.write_text(json.dumps({"load-schedule": "step"}))
    with pytest.raises(LoadError, match="load-schedule"):
        read_config(config)
    config.write_text(json.dumps({"colour": "red"}))
    with pytest.raises(LoadError, match="unknown or unsupported ghz setting 'colour'"):
        read_config(config)


def test_flags_override_the_config_and_n_replaces_its_duration() -> None:
    args = build_parser().parse_args(["load", "-n", "9", "-c", "3", "other:1", "--rps", "2"])
    settings = merged({"duration": "30s", "concurrency": 32, "host": "h:1", "rps": 5}, args)
    assert settings["total"] == 9 and "duration" not in settings
    assert (settings["concurrency"], settings["host"], settings["rps"]) == (3, "other:1", 2.0)


def test_every_shipped_config_reads_and_its_data_parses() -> None:
    configs = sorted((ROOT / "deploy" / "ghz").glob("*.json"))
    assert len(configs) >= 5
    for path in configs:
        config = read_config(path)
        assert config["call"] == EMBED and config["insecure"] is True
        assert parse_size(config["max-recv-message-size"]) >= 64 * 2**20
        RequestData(json.dumps(config["data"]), resolve_method(EMBED)).request(context())


def test_the_images_config_carries_the_committed_pngs() -> None:
    ghz = ROOT / "deploy" / "ghz"
    config = read_config(ghz / "images.json")
    sent = RequestData(json.dumps(config["data"]), resolve_method(EMBED))
    images = []
    for n in range(2):
        request = sent.request(context(n))
        assert isinstance(request, pb.EmbedRequest)
        images.append(request.prompt.items[0].image.data)
    assert images == [(ghz / "images" / "disc.png").read_bytes(),
                      (ghz / "images" / "checkers.png").read_bytes()]  # fmt: skip


def test_unknown_templates_fail_before_any_call(capsys: pytest.CaptureFixture[str]) -> None:
    # The port is closed: the run must fail on the template, not on the connection.
    code = main(["load", "127.0.0.1:9", "-n", "1", "-c", "1", "-d", '{"model": "{{.Nope}}"}'])
    assert code == 2
    assert "unknown template action {{.Nope}}" in capsys.readouterr().err


def test_no_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["load", "127.0.0.1:9", "-n", "1", "-c", "1", "--connect-timeout", "0.3s", "-d", "{}"]
    )
    assert code == 1
    assert "could not connect to 127.0.0.1:9" in capsys.readouterr().err


def test_tls_flags_win_over_the_config_and_certificates_in_it_turn_tls_on(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"PEM")
    flags_tls = Security(tls=True, token="t")
    assert resolve_security({"insecure": True}, flags_tls, False) is flags_tls
    assert resolve_security({"insecure": True}, Security(token="t"), False) == Security(token="t")
    with pytest.raises(LoadError, match="contradicts"):
        resolve_security({}, flags_tls, True)
    from_config = resolve_security(
        {"cacert": str(ca), "cname": "lamina"}, Security(token="t"), False
    )
    assert from_config.tls and from_config.root_certificates == b"PEM"
    assert (from_config.server_name, from_config.token) == ("lamina", "t")
    assert resolve_security({"insecure": False}, Security(), False).tls  # ghz's default is TLS
    assert not resolve_security({}, Security(), False).tls  # lamina-client's is plaintext
