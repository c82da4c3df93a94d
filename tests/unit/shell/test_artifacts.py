"""Artifacts of a job, read back through the Prefect client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from prefect_llm_batch.artifacts import artifact_key
from prefect_llm_batch.flows import enrich_table
from tests.paths import EXAMPLES

pytestmark = pytest.mark.usefixtures("prefect_harness")
EXAMPLE = str(EXAMPLES / "reviews.csv")


def test_progress_summary_and_sample_artifacts(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    summary = enrich_table(
        source=EXAMPLE, output=str(tmp_path / "out.parquet"), prompt="Sentiment of: {{ review }}",
        model="gpt-4o-mini", limit=12, state_dir=str(tmp_path / "state"), max_requests_per_batch=5,
    )  # fmt: skip

    async def read() -> dict[str, object]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=artifact_key(summary.job_id)))
            )
            return {a.key: a for a in found}

    by_key = asyncio.run(read())
    progress = by_key[artifact_key(summary.job_id)]
    assert progress.type == "progress" and progress.data == 100.0  # type: ignore[attr-defined]
    markdown = by_key[f"{artifact_key(summary.job_id)}-summary"]
    assert "| rows | 12 |" in str(markdown.data)  # type: ignore[attr-defined]
    assert "simulator, not from a model" in str(markdown.data)  # type: ignore[attr-defined]
    sample = by_key[f"{artifact_key(summary.job_id)}-sample"]
    assert sample.type == "table" and "review_id" in str(sample.data)  # type: ignore[attr-defined]
