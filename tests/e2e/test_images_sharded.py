"""Images in the rows of a sharded job: relative paths are read from the dataset's root (the
source the user gave), as one process reads them, and the image files are part of the job's
identity; over real HTTP to the fake server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.jobs.sharded import run_sharded_job
from prefect_llm_batch.object_stores import filesystem
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.spec import JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig
from tests.e2e.test_images_e2e import data_url, png

KEY = "fake-key-images-sharded"
FAST = RunOptions(poll_interval=0.02, retry_backoff=0)
COLOURS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (9, 9, 9), "e": (200, 100, 0)}
DAYS = {"01": ["a", "b", "c"], "02": ["d", "e"]}


@pytest.fixture
def server() -> Any:
    with FakeProviderServer(FakeServerConfig(validating_seconds=0, in_progress_seconds=0.05)) as s:
        yield s


def dataset(root: str) -> str:
    """``day=01/part.parquet``, ``day=02/part.parquet`` and ``imgs/`` under ``root`` (a folder or
    an fsspec URL): rows name their images relative to the root (``imgs/a.png``), not to their
    part's folder."""
    fs, path = filesystem(root, None)
    for name, rgb in COLOURS.items():
        fs.makedirs(f"{path}/imgs", exist_ok=True)
        with fs.open(f"{path}/imgs/{name}.png", "wb") as file:
            file.write(png(1, 1, rgb))
    for day, names in DAYS.items():
        fs.makedirs(f"{path}/day={day}", exist_ok=True)
        table = pa.table({"id": names, "text": names, "img": [f"imgs/{n}.png" for n in names]})
        with fs.open(f"{path}/day={day}/part.parquet", "wb") as file:
            pq.write_table(table, file, row_group_size=1)
    return root


@pytest.fixture(params=["folder", "object-store"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The dataset's root: a local folder, or an fsspec URL of a directory (``memory://``)."""
    if request.param == "folder":
        yield str(tmp_path / "src")
        return
    url = f"memory://images-sharded/{tmp_path.name}/src"
    yield url
    fs, path = filesystem(url, None)
    fs.rm(path, recursive=True)


def target(server: FakeProviderServer) -> ProviderTarget:
    return ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)


SPEC = JobSpec(
    prompt="Describe {{ text }}",
    model="vision-model",
    provider="openai",
    image_columns=["img"],
    id_column="id",
)


def sent(server: FakeProviderServer) -> list[dict[str, Any]]:
    return [
        orjson.loads(raw)
        for batch in server.batches.values()
        for raw in batch.input_data.splitlines()
        if raw.strip()
    ]


def run_sharded(server: FakeProviderServer, source: str, state: Path, output: Path) -> pa.Table:
    where = target(server)
    with make_provider(where, api_key=KEY, backoff=0.01) as provider:
        run_sharded_job(
            source, SPEC, provider, where, FAST, state_dir=str(state), output=str(output),
            rows_per_shard=2, single_file=True,
        )  # fmt: skip
    return pq.read_table(output)


def test_a_sharded_job_reads_relative_image_paths_from_the_dataset_root_as_one_process_does(
    server: FakeProviderServer, tmp_path: Path, root: str
) -> None:
    source = dataset(root)
    sharded = run_sharded(server, source, tmp_path / "s1", tmp_path / "sharded.parquet")
    bodies = [line["body"] for line in sent(server)]
    assert len(bodies) == 5
    for body in bodies:
        text, image = body["messages"][0]["content"]
        name = text["text"].removeprefix("Describe ")
        assert image["image_url"]["url"] == data_url("image/png", png(1, 1, COLOURS[name]))
    where = target(server)
    with make_provider(where, api_key=KEY, backoff=0.01) as provider:
        jobs.run_job(
            source, SPEC, provider, where, FAST, state_dir=str(tmp_path / "s2"),
            output=str(tmp_path / "one.parquet"),
        )  # fmt: skip
    single = pq.read_table(tmp_path / "one.parquet")
    keep = ["id", "text", "img", "day", "response", "response_error_kind"]
    assert sharded.select(keep).equals(single.select(keep))
    assert sharded.column("id").to_pylist() == ["a", "b", "c", "d", "e"]


def test_an_image_changed_in_place_makes_a_new_sharded_job_that_sends_only_that_image_again(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    source = dataset(str(tmp_path / "src"))
    run_sharded(server, source, tmp_path / "state", tmp_path / "first.parquet")
    first = {line["custom_id"] for line in sent(server)}
    bigger = png(3, 3, (1, 2, 3))
    (tmp_path / "src" / "imgs" / "d.png").write_bytes(bigger)
    table = run_sharded(server, source, tmp_path / "state", tmp_path / "second.parquet")
    new = [line for line in sent(server) if line["custom_id"] not in first]
    assert len(new) == 1
    assert new[0]["body"]["messages"][0]["content"][1]["image_url"]["url"] == data_url("image/png", bigger)
    assert table.column("response_cached").to_pylist() == [True, True, True, False, True]
