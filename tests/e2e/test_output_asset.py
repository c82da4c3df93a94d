"""The output Parquet is a Prefect asset: the write step materializes it, lineage from the source."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.events.schemas.events import Event
from prefect.events.worker import EventsWorker

from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.tasks import asset_key

pytestmark = pytest.mark.usefixtures("prefect_harness")


def asset_events(prefix: str, since: Any, want: int) -> list[Event]:
    """The server's events named ``prefix...`` since ``since`` (they reach it asynchronously)."""
    EventsWorker.drain_all()
    flt = EventFilter(event=EventNameFilter(prefix=[prefix]), occurred=EventOccurredFilter(since=since))
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=flt, limit=50).events
            if len(events) >= want or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


def test_the_write_step_materializes_the_output_as_an_asset_with_job_and_rows(tmp_path: Path) -> None:
    from prefect.types._datetime import now

    source = tmp_path / "reviews.csv"
    pa_csv.write_csv(pa.table({"id": [1, 2, 3], "text": ["great", "awful", "great"]}), str(source))
    output = tmp_path / "out" / "reviews.parquet"
    started = now("UTC")
    summary = enrich_table(
        source=str(source), output=str(output), prompt="Sentiment of: {{ text }}", model="gpt-4o-mini",
        state_dir=str(tmp_path / "state"), poll_interval=0.05,
    )  # fmt: skip
    assert pq.read_table(output).num_rows == 3

    (event,) = asset_events("prefect.asset.materialization", started, want=1)
    assert event.event == "prefect.asset.materialization.succeeded"
    assert event.resource.id == f"file://{output}" == asset_key(str(output))
    assert event.payload == {
        "job_id": summary.job_id, "rows": 3, "ok_rows": 3, "error_rows": 0,
        "provider": "simulator", "model": "gpt-4o-mini",
    }  # fmt: skip
    related = {r.id: r.role for r in event.related}
    assert related[f"file://{source}"] == "asset"  # lineage: source -> output
    (referenced,) = asset_events("prefect.asset.referenced", started, want=1)
    assert referenced.resource.id == f"file://{source}"


def test_an_output_path_that_cannot_be_an_asset_key_is_still_written(tmp_path: Path) -> None:
    source = tmp_path / "reviews.csv"
    pa_csv.write_csv(pa.table({"text": ["great", "awful"]}), str(source))
    output = tmp_path / "my reviews.parquet"
    assert asset_key(str(output)) is None
    enrich_table(
        source=str(source), output=str(output), prompt="Sentiment of: {{ text }}", model="m",
        state_dir=str(tmp_path / "state"), poll_interval=0.05,
    )  # fmt: skip
    assert pq.read_table(output).num_rows == 2
