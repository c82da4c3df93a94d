"""Adopting a batch after an ambiguous create only when it is proven to be the job's.

Over real HTTP against the fake provider. An ambiguous create is made with the fake's faults:
``fail_next`` (a 5xx answered before any batch is made) or ``stall_next_create`` (the batch is
made, the answer comes after the client's read timeout). "Another job's" batch is made through
the provider's routes directly, with a client of its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.errors import AmbiguousCreate
from prefect_llm_batch.jobs.driver import run_batches
from prefect_llm_batch.providers import anthropic_target, make_provider
from prefect_llm_batch.providers.base import BatchProvider
from prefect_llm_batch.spec import ErrorKind, JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "fake-key-FAKE-adoption-0000"
FAST = RunOptions(poll_interval=0.02, retry_backoff=0)
TEXTS = ["first", "second", "third"]
CANCEL = "POST /v1/messages/batches/{id}/cancel"
CREATE = "POST /v1/messages/batches"


def echo(body: dict[str, Any]) -> str:
    """Answer with the prompt itself: an answer shows which request it belongs to."""
    return str(body["messages"][-1]["content"])


def source(tmp_path: Path, texts: list[str] = TEXTS) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path)
    return str(path)


def prepare(
    target: ProviderTarget, model: str, tmp_path: Path, **provider_options: Any
) -> tuple[jobs.JobRef, BatchProvider]:
    spec = JobSpec(prompt="About {{ text }}", model=model, provider=target.provider)
    provider = make_provider(target, api_key=KEY, backoff=0.01, **provider_options)
    ref = jobs.prepare(source(tmp_path), spec, provider, target, state_dir=str(tmp_path / "state"))
    return ref, provider


def prepare_anthropic(
    server: FakeProviderServer, tmp_path: Path, **provider_options: Any
) -> tuple[jobs.JobRef, BatchProvider]:
    target = anthropic_target(server.anthropic_base_url)
    return prepare(target, "claude-3-5-haiku-latest", tmp_path, **provider_options)


def foreign_message_batch(server: FakeProviderServer, n: int) -> str:
    """Another client's message batch of ``n`` requests (its own ids and prompts)."""
    requests = [
        {
            "custom_id": f"another-job-{i}",
            "params": {
                "model": "claude-3-5-haiku-latest",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"another job's prompt {i}"}],
            },
        }
        for i in range(n)
    ]
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=server.anthropic_base_url, headers=headers) as client:
        response = client.post("/v1/messages/batches", json={"requests": requests})
    response.raise_for_status()
    return str(response.json()["id"])


def output(ref: jobs.JobRef, tmp_path: Path) -> pa.Table:
    path = tmp_path / "out.parquet"
    jobs.assemble(ref, output=str(path))
    return pq.read_table(path)


def never_cancelled(server: FakeProviderServer, batch_id: str) -> bool:
    return server.message_batch(batch_id)["cancel_initiated_at"] is None


def test_anthropic_foreign_batch_of_the_same_size_is_not_joined_and_the_chunk_is_created_again(
    tmp_path: Path,
) -> None:
    config = FakeServerConfig(api_key=KEY, answer=echo, in_progress_seconds=0.3)
    with FakeProviderServer(config) as server:
        ref, provider = prepare_anthropic(server, tmp_path)
        foreign = foreign_message_batch(server, len(TEXTS))
        server.fail_next("POST", "/v1/messages/batches", status=500)  # ambiguous; nothing made
        with provider:
            state = jobs.submit_chunk(ref, 0, provider, FAST)
            assert (state.batch_id, state.provisional) == (foreign, True)
            run_batches(ref, provider, FAST)
        table = output(ref, tmp_path)
        state = JobStore(ref.state_dir, ref.job_id).read_chunk(0)
        assert state.batch_id not in (None, foreign) and not state.provisional
        assert [h["batch_id"] for h in state.history] == [foreign]
        assert never_cancelled(server, foreign) and server.stats.calls[CANCEL] == 0
        # foreign, the failed create, the chunk created again
        assert server.stats.calls[CREATE] == 3 and server.stats.creates == 2
        assert JobStore(ref.state_dir, ref.job_id).read_job().rounds == 1  # no rows left to retry
    assert table.column("response").to_pylist() == [f"About {t}" for t in TEXTS]
    assert table.column("response_batch_id").to_pylist() == [state.batch_id] * len(TEXTS)


def test_anthropic_unproven_batch_is_never_cancelled_when_max_wait_passes(tmp_path: Path) -> None:
    config = FakeServerConfig(api_key=KEY, answer=echo, stall_in="in_progress")
    options = RunOptions(poll_interval=0.02, retry_backoff=0, max_wait=0.2)
    with FakeProviderServer(config) as server:
        ref, provider = prepare_anthropic(server, tmp_path)
        foreign = foreign_message_batch(server, len(TEXTS))  # runs until unstalled
        server.fail_next("POST", "/v1/messages/batches", status=500)
        with provider:
            assert jobs.submit_chunk(ref, 0, provider, options).batch_id == foreign
            assert jobs.poll_once(ref, provider, options).pending == [0]  # before max_wait: waits
            time.sleep(0.3)
            poll = jobs.poll_once(ref, provider, options)
            assert (poll.pending, poll.resubmit) == ([], [0])  # let go, to be created again
            assert server.stats.calls[CANCEL] == 0
            assert server.message_batch(foreign)["processing_status"] == "in_progress"
            server.unstall_batches()
            run_batches(ref, provider, options)
        table = output(ref, tmp_path)
        assert never_cancelled(server, foreign) and server.stats.calls[CANCEL] == 0
        assert server.message_batch(foreign)["processing_status"] == "ended"
        assert server.stats.creates == 2
    assert table.column("response").to_pylist() == [f"About {t}" for t in TEXTS]
    assert foreign not in table.column("response_batch_id").to_pylist()


def test_anthropic_unproven_batch_is_never_cancelled_by_a_cancelled_job(tmp_path: Path) -> None:
    config = FakeServerConfig(api_key=KEY, stall_in="in_progress")
    with FakeProviderServer(config) as server:
        ref, provider = prepare_anthropic(server, tmp_path)
        foreign = foreign_message_batch(server, len(TEXTS))
        server.fail_next("POST", "/v1/messages/batches", status=500)
        with provider:
            jobs.submit_chunk(ref, 0, provider, FAST)
            assert jobs.cancel_job(ref, provider) == []
            assert jobs.wait(ref, provider, FAST) == []  # nothing left to wait for
            jobs.collect_chunk(ref, 0, provider, FAST)
        assert server.stats.calls[CANCEL] == 0 and never_cancelled(server, foreign)
        results = JobStore(ref.state_dir, ref.job_id).read_results(0)
    kinds = results.column("response_error_kind").to_pylist()
    assert kinds == [ErrorKind.BATCH_CANCELLED.value] * len(TEXTS)
    assert foreign not in results.column("response_batch_id").to_pylist()


def test_anthropic_batch_found_after_an_ambiguous_create_is_adopted_once_its_results_prove_it(
    tmp_path: Path,
) -> None:
    config = FakeServerConfig(api_key=KEY, answer=echo, in_progress_seconds=0.3)
    with FakeProviderServer(config) as server:
        ref, provider = prepare_anthropic(server, tmp_path, read_timeout=0.5)
        foreign_message_batch(server, len(TEXTS) + 1)  # another size: no candidate
        server.stall_next_create(2.0, route="/v1/messages/batches")  # made, answered too late
        with provider:
            state = jobs.submit_chunk(ref, 0, provider, FAST)
            ours = state.batch_id
            assert ours is not None and ours in server.message_batches and state.provisional
            [chunk_file] = Path(ref.state_dir).glob(f"jobs/{ref.job_id}/chunks/chunk-00000.json")
            assert json.loads(chunk_file.read_text())["provisional"] is True
            run_batches(ref, provider, FAST)
        table = output(ref, tmp_path)
        state = JobStore(ref.state_dir, ref.job_id).read_chunk(0)
        assert (state.batch_id, state.provisional, state.history) == (ours, False, [])
        assert server.stats.calls[CREATE] == 2 and server.stats.creates == 2  # no second create
        # read once to prove it, once to collect it
        assert server.stats.calls["GET /v1/messages/batches/{id}/results"] == 2
    assert table.column("response").to_pylist() == [f"About {t}" for t in TEXTS]
    assert table.column("response_batch_id").to_pylist() == [ours] * len(TEXTS)


def test_anthropic_unproven_batch_that_ended_frees_its_place_for_the_next_chunk(tmp_path: Path) -> None:
    def no_waiting(seconds: float) -> None:
        raise AssertionError("chunk 1 waited for a place")

    options = RunOptions(poll_interval=0.02, retry_backoff=0, max_in_flight_batches=1)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, answer=echo)) as server:
        target = anthropic_target(server.anthropic_base_url)
        spec = JobSpec(
            prompt="About {{ text }}",
            model="claude-3-5-haiku-latest",
            provider="anthropic",
            limits={"max_requests_per_batch": 2},
        )
        with make_provider(target, api_key=KEY, backoff=0.01) as provider:
            ref = jobs.prepare(source(tmp_path), spec, provider, target, state_dir=str(tmp_path / "s"))
            assert ref.chunks == 2
            foreign = foreign_message_batch(server, 2)  # ends at once
            server.fail_next("POST", "/v1/messages/batches", status=500)
            state = jobs.submit_chunk(ref, 0, provider, options)
            assert (state.batch_id, state.provisional, state.status) == (foreign, True, "completed")
            jobs.wait_for_capacity(ref, 1, provider, options, sleep=no_waiting)
            assert jobs.submit_chunk(ref, 1, provider, options, sleep=no_waiting).batch_id
            run_batches(ref, provider, options)
        table = output(ref, tmp_path)
        assert never_cancelled(server, foreign)
    assert table.column("response").to_pylist() == [f"About {t}" for t in TEXTS]


# ---- OpenAI: metadata and the input file, both ----------------------------------------------


def openai_target(server: FakeProviderServer) -> ProviderTarget:
    return ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)


def foreign_batch(
    server: FakeProviderServer, data: bytes, metadata: dict[str, str], file_id: str = ""
) -> str:
    """A batch made by another client: from ``file_id``, else from a new upload of ``data``."""
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        if not file_id:
            files = {"file": ("copy.jsonl", data, "application/jsonl")}
            uploaded = client.post("/files", files=files, data={"purpose": "batch"})
            file_id = str(uploaded.raise_for_status().json()["id"])
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": metadata,
        }
        return str(client.post("/batches", json=body).raise_for_status().json()["id"])


def test_openai_batch_with_the_chunks_metadata_but_another_input_file_is_not_adopted(
    tmp_path: Path,
) -> None:
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as server:
        ref, provider = prepare(openai_target(server), "gpt-4o-mini", tmp_path)
        store = JobStore(ref.state_dir, ref.job_id)
        metadata = {"job_id": ref.job_id, "chunk_id": "0", "attempt": "1"}
        # e.g. a copy of this job's state directory, run elsewhere: same metadata, same lines
        copy = foreign_batch(server, store.read_chunk_input(0), metadata)
        server.fail_next("POST", "/v1/batches", status=502)  # ambiguous; nothing made
        with provider:
            state = jobs.submit_chunk(ref, 0, provider, FAST)
            assert state.batch_id not in (None, copy)
            assert server.batches[state.batch_id].input_file_id == state.input_file_id
            jobs.wait(ref, provider, FAST)
            jobs.collect_chunk(ref, 0, provider, FAST)
        assert server.creates_for(ref.job_id) == 2  # the copy, and the chunk created again
        assert server.batch(copy)["cancelled_at"] is None
        table = output(ref, tmp_path)
    assert table.column("response_batch_id").to_pylist() == [state.batch_id] * len(TEXTS)


def test_openai_resume_adopts_neither_another_file_nor_another_jobs_metadata(tmp_path: Path) -> None:
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as server:
        ref, provider = prepare(openai_target(server), "gpt-4o-mini", tmp_path)
        store = JobStore(ref.state_dir, ref.job_id)
        server.fail_next("POST", "/v1/batches", status=502, times=2)
        with provider:
            with pytest.raises(AmbiguousCreate):  # the create, and the one after an empty list
                jobs.submit_chunk(ref, 0, provider, FAST)
            state = store.read_chunk(0)
            assert state.intent_at is not None and state.input_file_id and state.batch_id is None
            data = store.read_chunk_input(0)
            ours = {"job_id": ref.job_id, "chunk_id": "0", "attempt": "1"}
            other_job = foreign_batch(server, data, {**ours, "job_id": "another-job"}, state.input_file_id)
            other_file = foreign_batch(server, data, ours)
            resumed = jobs.submit_chunk(ref, 0, provider, FAST)
        assert resumed.batch_id not in (None, other_job, other_file)
        assert server.batches[resumed.batch_id].input_file_id == state.input_file_id
        assert server.batches[resumed.batch_id].metadata == ours
        assert server.stats.creates == 3


def test_anthropic_own_batch_with_an_unreadable_result_line_is_adopted_and_the_row_retried(
    tmp_path: Path,
) -> None:
    config = FakeServerConfig(api_key=KEY, answer=echo, in_progress_seconds=0.3)
    with FakeProviderServer(config) as server:
        ref, provider = prepare_anthropic(server, tmp_path, read_timeout=0.5)
        server.stall_next_create(2.0, route="/v1/messages/batches")  # made, answered too late
        server.spoil_next_result_line("garble", line=1)  # one of its lines cannot be read
        with provider:
            state = jobs.submit_chunk(ref, 0, provider, FAST)
            ours = state.batch_id
            assert ours is not None and state.provisional
            run_batches(ref, provider, FAST)
        table = output(ref, tmp_path)
        store = JobStore(ref.state_dir, ref.job_id)
        state = store.read_chunk(0)
        assert (state.batch_id, state.provisional, state.history) == (ours, False, [])
        assert state.unreadable_lines == 1
        # the chunk's batch once, and the retry round's batch for the row whose line was garbled
        assert server.stats.calls[CREATE] == 2 and server.stats.creates == 2
        assert store.read_job().rounds == 2
    assert table.column("response").to_pylist() == [f"About {t}" for t in TEXTS]
    assert table.column("response_error_kind").to_pylist() == [None] * len(TEXTS)
    batch_ids = table.column("response_batch_id").to_pylist()
    assert batch_ids.count(ours) == len(TEXTS) - 1 and None not in batch_ids


def test_anthropic_cancel_keeps_an_ended_provisional_batch_its_results_prove_and_the_next_run_collects_it(
    tmp_path: Path,
) -> None:
    with FakeProviderServer(FakeServerConfig(api_key=KEY, answer=echo)) as server:
        ref, provider = prepare_anthropic(server, tmp_path, read_timeout=0.5)
        server.stall_next_create(1.0, route="/v1/messages/batches")  # made, answered too late
        with provider:
            state = jobs.submit_chunk(ref, 0, provider, FAST)
            ours = state.batch_id
            assert ours is not None and state.provisional
            assert server.message_batch(ours)["processing_status"] == "ended"  # paid for already
            assert jobs.cancel_job(ref, provider) == []
            state = JobStore(ref.state_dir, ref.job_id).read_chunk(0)
            assert (state.batch_id, state.provisional, state.cancelled_by, state.history) == (
                ours,
                False,
                None,
                [],
            )
            run_batches(ref, provider, FAST)  # the next run: collects it, creates nothing
        table = output(ref, tmp_path)
        assert server.stats.calls[CANCEL] == 0
        assert server.stats.calls[CREATE] == 1 and server.stats.creates == 1
    assert table.column("response").to_pylist() == [f"About {t}" for t in TEXTS]
    assert table.column("response_batch_id").to_pylist() == [ours] * len(TEXTS)


def test_anthropic_batch_of_the_same_size_created_well_before_the_intent_is_not_a_candidate(
    tmp_path: Path,
) -> None:
    with FakeProviderServer(FakeServerConfig(api_key=KEY, answer=echo)) as server:
        ref, provider = prepare_anthropic(server, tmp_path)
        foreign = foreign_message_batch(server, len(TEXTS))
        # made ten minutes before this run's intent to create (the snapshot holds the live batch)
        server.message_batches[foreign].created_at -= 600
        server.fail_next("POST", "/v1/messages/batches", status=500)  # ambiguous; nothing made
        with provider:
            state = jobs.submit_chunk(ref, 0, provider, FAST)
            assert state.batch_id not in (None, foreign) and not state.provisional
            assert state.history == []
            run_batches(ref, provider, FAST)
        table = output(ref, tmp_path)
        # foreign, the failed create, the chunk's create
        assert server.stats.calls[CREATE] == 3 and server.stats.creates == 2
        assert never_cancelled(server, foreign)
    assert table.column("response").to_pylist() == [f"About {t}" for t in TEXTS]
    assert table.column("response_batch_id").to_pylist() == [state.batch_id] * len(TEXTS)
