"""Streaming preparation and output: the fast request encoder equals the plain one, slices change
nothing, partitioned inputs run end to end, and errors still name the row."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.batchfile import (
    RequestEncoder,
    build_request_set,
    json_string_contents,
    plan_chunks,
)
from prefect_llm_batch.errors import StateError, TemplateError
from prefect_llm_batch.jobs.input_checks import check_and_render
from prefect_llm_batch.keys import canonical_json, custom_id_array, custom_id_from_digest, request_digest
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.providers.anthropic import AnthropicBatchProvider
from prefect_llm_batch.providers.openai import OpenAIBatchProvider, chat_body
from prefect_llm_batch.schemas import ResponseSchema
from prefect_llm_batch.spec import BatchLimits, JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.table import reading as table_reading
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "test-key-streaming-0000"
FAST = RunOptions(poll_interval=0.02, retry_backoff=0)

#: Characters that JSON escapes, that split naive parsers, and that are not ASCII.
TRICKY = ['"', "\\", ",", '",', '","', "\\\\", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "é", "漢", "🙂", " "]


def random_texts(rng: random.Random, n: int) -> list[str]:
    texts = []
    for _ in range(n):
        pieces = [rng.choice(TRICKY) if rng.random() < 0.4 else "word" for _ in range(rng.randint(0, 8))]
        texts.append("".join(pieces))
    return [*texts, "", '",', 'ends with ",', '\\",', '"', "\\"]


def test_json_string_contents_equals_orjson_per_text() -> None:
    rng = random.Random(7)
    for _ in range(200):
        texts = random_texts(rng, rng.randint(0, 12))
        assert json_string_contents(texts) == [orjson.dumps(t)[1:-1] for t in texts]
    assert json_string_contents([]) == []


def test_custom_id_array_equals_one_at_a_time() -> None:
    rng = random.Random(3)
    digests = [rng.randbytes(32) for _ in range(500)]
    assert custom_id_array(digests).to_pylist() == [custom_id_from_digest(d) for d in digests]
    assert custom_id_array([]).to_pylist() == []


SCHEMA = ResponseSchema({"type": "object", "properties": {"label": {"type": "string"}}})
OPENAI = OpenAIBatchProvider(api_key="unused", base_url="https://api.openai.com/v1")
EMBED = OpenAIBatchProvider(api_key="unused", base_url="https://api.openai.com/v1", endpoint="/v1/embeddings")
ANTHROPIC = AnthropicBatchProvider(api_key="unused")
CASES: list[tuple[str, Any, dict[str, Any], ResponseSchema | None, bool]] = [
    ("openai chat", OPENAI, {"temperature": 0, "max_tokens": 5}, None, True),
    ("openai structured", OPENAI, {}, SCHEMA, True),
    ("openai embeddings", EMBED, {"dimensions": 8}, None, False),
    ("anthropic", ANTHROPIC, {"max_tokens": 20}, None, True),
    ("anthropic structured", ANTHROPIC, {}, SCHEMA, True),
]


@pytest.mark.parametrize(
    ("name", "provider", "params", "schema", "systems"), CASES, ids=[c[0] for c in CASES]
)
def test_encoder_equals_building_every_body(
    name: str, provider: Any, params: dict[str, Any], schema: ResponseSchema | None, systems: bool
) -> None:
    rng = random.Random(name)
    prompts = random_texts(rng, 300)
    system_texts: list[str | None] | None = None
    if systems:  # a mix of real, empty and missing system prompts: three body shapes
        system_texts = [rng.choice([None, "", "Be brief.", *random_texts(rng, 3)]) for _ in prompts]

    def build_body(prompt: str, system: str | None) -> dict[str, Any]:
        return dict(provider.build_body("m-1", prompt, system, params, schema))

    encoder = RequestEncoder(
        provider="p",
        base_url="https://x.example/v1",
        endpoint=provider.endpoint,
        build_body=build_body,
        build_line=provider.build_line,
    )
    encoded = encoder.encode(prompts, system_texts)
    for row, prompt in enumerate(prompts):
        body = build_body(prompt, system_texts[row] if system_texts else None)
        digest = request_digest("p", "https://x.example/v1", provider.endpoint, body)
        assert encoded.digests[row] == digest, row
        assert encoded.custom_ids[row] == custom_id_from_digest(digest)
        assert encoded.body_json(row) == canonical_json(body)
    rows = list(range(0, len(prompts), 3))
    for row, line in zip(rows, encoded.lines(rows), strict=True):
        body = build_body(prompts[row], system_texts[row] if system_texts else None)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert orjson.loads(line) == provider.build_line(encoded.custom_ids[row], body)


def test_encoder_falls_back_when_the_builder_changes_the_text() -> None:
    def build_body(prompt: str, system: str | None) -> dict[str, Any]:
        return {"model": "m", "input": prompt.strip().upper()}

    encoder = RequestEncoder(provider="p", base_url="https://x/v1", endpoint="/e", build_body=build_body)
    prompts = ["  a ", "b", "  a "]
    encoded = encoder.encode(prompts)
    for row, prompt in enumerate(prompts):
        assert encoded.digests[row] == request_digest("p", "https://x/v1", "/e", build_body(prompt, None))


def _job_table(n: int) -> pa.Table:
    rng = random.Random(n)
    texts = ["same" if i % 7 == 3 else f"{i}: {random_texts(rng, 1)[0]}" for i in range(n)]
    return pa.table({"id": list(range(n)), "text": texts, "n": [i % 5 for i in range(n)]})


def _write_parts(directory: Path, table: pa.Table, sizes: list[int]) -> None:
    directory.mkdir(parents=True)
    start = 0
    for index, size in enumerate(sizes):  # names sort in row order; sizes cross slice borders
        pq.write_table(table.slice(start, size), directory / f"part-{index:03d}.parquet")
        start += size


def test_prepare_in_slices_equals_the_whole_job_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _job_table(200)
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    spec = JobSpec(
        prompt="Q {{ text }} / {{ n }}",
        system="{% if n %}sys {{ n }}{% endif %}",
        model="gpt-4o-mini",
        provider="openai",
        limits=BatchLimits(max_requests_per_batch=9),
    )
    target = ProviderTarget(provider="openai", base_url="https://x/v1", key_base_url="https://x/v1")
    provider = OpenAIBatchProvider(api_key="unused", base_url="https://x/v1")
    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", 7)
    ref = jobs.prepare(str(source), spec, provider, target, state_dir=str(tmp_path / "state"))

    prompts, systems = check_and_render(spec, table)
    expected = build_request_set(
        provider="openai",
        base_url="https://x/v1",
        endpoint=provider.endpoint,
        prompts=prompts,
        systems=systems,
        build_body=lambda p, s: provider.build_body(spec.model, p, s, {}, None),
    )
    store = JobStore(ref.state_dir, ref.job_id)
    assert store.read_row_ids().to_pylist() == expected.row_ids
    assert ref.rows == 200 and ref.unique_requests == len(expected.unique_ids) < 200
    sent = [
        orjson.loads(line)
        for chunk in store.read_job().chunks
        for line in store.read_chunk_input(chunk.chunk_id).splitlines()
    ]
    assert [line["custom_id"] for line in sent] == expected.unique_ids
    assert [line["body"] for line in sent] == expected.bodies
    sizes = [len(store.read_chunk_input(c.chunk_id)) for c in store.read_job().chunks]
    lines = [
        line for c in store.read_job().chunks for line in store.read_chunk_input(c.chunk_id).splitlines(True)
    ]
    planned = plan_chunks([len(line) for line in lines], BatchLimits(max_requests_per_batch=9))
    assert sizes == [c.n_bytes for c in planned]
    assert [c.requests for c in store.read_job().chunks] == [c.size for c in planned]


def test_a_bad_row_in_a_later_slice_is_named_by_its_row_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = pa.table({"key": [f"k{i}" for i in range(30)], "n": [1] * 23 + [0] + [1] * 6})
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    spec = JobSpec(prompt="{{ 10 // n }}", model="m", provider="openai", id_column="key")
    target = ProviderTarget(provider="openai", base_url="https://x/v1", key_base_url="https://x/v1")
    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", 10)
    provider = OpenAIBatchProvider(api_key="unused", base_url="https://x/v1")
    with pytest.raises(TemplateError, match=r"row 23 \(id 'k23'\)"):
        jobs.prepare(str(source), spec, provider, target, state_dir=str(tmp_path / "state"))
    assert not list((tmp_path / "state").glob("jobs/*/job.json"))  # nothing half-prepared


def test_partitioned_input_runs_end_to_end_in_row_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _job_table(120)
    _write_parts(tmp_path / "parts", table, [50, 1, 33, 36])
    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", 16)
    out = tmp_path / "out.parquet"
    with FakeProviderServer(FakeServerConfig()) as server:
        target = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
        spec = JobSpec(
            prompt="Say {{ text }}",
            model="gpt-4o-mini",
            provider="openai",
            id_column="id",
            limits=BatchLimits(max_requests_per_batch=25),
        )
        with make_provider(target, api_key=KEY, backoff=0.01) as provider:
            ref = jobs.prepare(str(tmp_path / "parts"), spec, provider, target, state_dir=str(tmp_path / "s"))
            for chunk in range(ref.chunks):
                jobs.submit_chunk(ref, chunk, provider, FAST)
            jobs.wait(ref, provider, FAST)
            for chunk in range(ref.chunks):
                jobs.collect_chunk(ref, chunk, provider, FAST)
            summary = jobs.assemble(ref, output=str(out))
        assert server.stats.creates == ref.chunks >= 2
    written = pq.read_table(out)
    assert summary.rows == written.num_rows == 120
    assert written.select(table.column_names).equals(table)
    assert written.column("response_error_kind").null_count == 120
    same = [
        r
        for r, t in zip(written.column("response").to_pylist(), table.column("text").to_pylist(), strict=True)
        if t == "same"
    ]
    assert len(set(same)) == 1 and len(same) > 1  # one request, fanned back out to every row
    assert pq.ParquetFile(out).metadata.num_row_groups == 8  # slices of 16 rows across parts


def test_output_refuses_a_source_that_lost_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = _job_table(20)
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    with FakeProviderServer(FakeServerConfig()) as server:
        target = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
        spec = JobSpec(prompt="{{ text }}", model="gpt-4o-mini", provider="openai")
        with make_provider(target, api_key=KEY, backoff=0.01) as provider:
            ref = jobs.prepare(str(source), spec, provider, target, state_dir=str(tmp_path / "s"))
            jobs.submit_chunk(ref, 0, provider, FAST)
            jobs.wait(ref, provider, FAST)
            jobs.collect_chunk(ref, 0, provider, FAST)
    store = JobStore(ref.state_dir, ref.job_id)
    ids = store.read_row_ids().to_pylist()
    store.write_row_ids([*ids, ids[0]])  # one row more than the source has: as if it shrank
    with pytest.raises(StateError, match="different number of rows"):
        jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet").exists()


def test_render_json_equals_rendering_then_encoding() -> None:
    from prefect_llm_batch.prompts import PromptTemplate

    rng = random.Random(5)
    a = [rng.choice([None, *random_texts(rng, 2)]) for _ in range(400)]
    b = random_texts(rng, 400)[:400]
    table = pa.table({"a": pa.array(a, pa.string()), "b": pa.array(b, pa.large_string())})
    for source in ('Q "{{ a }}"\n\t{{ b }}{{ a }}\\', "{{ b }}", 'no columns, "quoted"\n', "{{a}}{{b}}"):
        template = PromptTemplate(source)
        contents = template.render_json(table)
        assert contents is not None
        assert contents.to_pylist() == [orjson.dumps(p)[1:-1] for p in template.render_table(table)]
    assert PromptTemplate("{{ a | upper }}").render_json(table) is None  # Jinja needed
    assert PromptTemplate("{{ n }}").render_json(pa.table({"n": [1]})) is None  # not a string column


def test_encoding_json_contents_equals_encoding_strings() -> None:
    from prefect_llm_batch.prompts import PromptTemplate

    rng = random.Random(9)
    table = pa.table({"a": random_texts(rng, 300), "s": [rng.choice(["", "sys", '"x"']) for _ in range(306)]})
    encoder = RequestEncoder(
        provider="p",
        base_url="https://x/v1",
        endpoint=OPENAI.endpoint,
        build_body=lambda p, s: OPENAI.build_body("m", p, s, {}, None),
        build_line=OPENAI.build_line,
    )
    prompt, system = PromptTemplate("Say {{ a }}"), PromptTemplate("{{ s }}")
    from_strings = encoder.encode(prompt.render_table(table), system.render_table(table))
    from_json = encoder.encode(prompt.render_json(table), system.render_json(table))  # type: ignore[arg-type]
    assert from_json.digests == from_strings.digests
    assert from_json.custom_ids == from_strings.custom_ids
    rows = list(range(0, 306, 5))
    assert from_json.lines(rows) == from_strings.lines(rows)


def test_failed_prepares_leave_no_thread_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from prefect_llm_batch.errors import InputError

    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", 8)
    target = ProviderTarget(provider="openai", base_url="https://x/v1", key_base_url="https://x/v1")
    texts = ["short"] * 30 + ["long " * 400] + ["short"] * 69
    pq.write_table(pa.table({"n": [1] * 50 + [0] + [1] * 49, "t": texts}), tmp_path / "in.parquet")
    failures = [  # one raised by the reading thread (rendering), one by the consumer (packing)
        (JobSpec(prompt="{{ 10 // n }}", model="m", provider="openai"), TemplateError, "row 50"),
        (
            JobSpec(prompt="{{ t }}", model="m", provider="openai", limits=BatchLimits(max_batch_bytes=1024)),
            InputError,
            "row 30 is",
        ),
    ]
    for spec, error, message in failures:
        with pytest.raises(error, match=message):
            jobs.prepare(str(tmp_path / "in.parquet"), spec, OPENAI, target, state_dir=str(tmp_path / "s"))
        names = {t.name for t in threading.enumerate()}
        assert not any(name.startswith("prefect-llm-batch-") for name in names), names


@pytest.mark.parametrize("slot", ["prompt", "system prompt"])
def test_encoder_refuses_a_null_text_naming_its_row(slot: str) -> None:
    # A null would join to a null body: a key of the fixed parts alone, and an empty line.
    encoder = RequestEncoder(
        provider="p", base_url="https://x/v1", endpoint="/e", build_body=lambda p, s: chat_body("m", p, s)
    )
    texts = pa.array([b"a", b"b", None], pa.large_binary())
    others = pa.array([b"x", b"y", b"z"], pa.large_binary())
    prompts, systems = (texts, others) if slot == "prompt" else (others, texts)
    with pytest.raises(ValueError, match=f"the {slot} of row 2 is null"):
        encoder.encode(prompts, systems)
