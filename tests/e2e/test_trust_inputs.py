"""Trust under faults, inputs: the output never destroys the input, checks that can fail after
payment come first, unbounded inputs are bounded, no crash at exit, empty prompts and bad bytes.

The flow tests run over real HTTP against the fake provider: its counters prove that nothing was
uploaded or created when a check fails.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.errors import InputError, TableError, TemplateError
from prefect_llm_batch.files import write_bytes_atomic
from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.jobs.checks import check_output, check_output_writable
from prefect_llm_batch.prompts import MAX_PROMPT_CHARS, PromptTemplate
from prefect_llm_batch.table import arrow_files, csv_reading, read_table, scan_table
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig
from tests.paths import REPO

API_KEY = "fake-key-FAKE-trust-inputs-0000"
ROOT = REPO


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with FakeProviderServer(FakeServerConfig(api_key=API_KEY, seed=3)) as srv:
        yield srv


def run(server: Any, source: str, output: str, state_dir: str, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "prompt": "Sentiment: {{ text }}",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "base_url": server.base_url,
        "state_dir": state_dir,
        "poll_interval": 0.05,
        "retry_backoff": 0,
        **kwargs,
    }
    return enrich_table(source=source, output=output, **options)


def nothing_sent(server: Any) -> bool:
    return server.stats.uploads == 0 and server.stats.creates == 0 and sum(server.stats.calls.values()) == 0


def write_csv(path: Path, texts: list[str]) -> str:
    pa_csv.write_csv(pa.table({"id": list(range(len(texts))), "text": texts}), str(path))
    return str(path)


# -- 7. the output never destroys the input --------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_output_on_the_source_or_the_state_is_refused_before_anything_is_sent(
    server: Any, tmp_path: Path, state_dir: str
) -> None:
    source = write_csv(tmp_path / "in.csv", ["good", "bad"])
    before = Path(source).read_bytes()
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.table({"id": [1], "text": ["fine"]}), parts / "a.parquet")
    (tmp_path / "link").symlink_to(tmp_path)
    cases = [
        (source, source, "is the source"),
        (source, f"file://{source}", "is the source"),
        (source, str(tmp_path / "link" / "in.csv"), "is the source"),  # through a symbolic link
        (str(parts), str(parts / "out.parquet"), "inside the source directory"),
        (str(parts), str(parts), "is the source"),
        (source, f"{state_dir}/out.parquet", "inside the state directory"),
    ]
    for src, output, message in cases:
        for overwrite in (False, True):
            with pytest.raises(TableError, match=message):
                run(server, src, output, state_dir, overwrite=overwrite)
    assert nothing_sent(server)
    assert Path(source).read_bytes() == before
    assert pq.read_table(parts / "a.parquet").num_rows == 1


def test_output_paths_are_compared_once_resolved() -> None:
    check_output("memory://trust/in.csv", "memory://trust/in.csv.parquet", "memory://trust-state")
    with pytest.raises(TableError, match="is the source"):
        check_output(
            "memory://trust/in.csv", "memory:///trust/in.csv", "memory://trust-state", overwrite=True
        )
    with pytest.raises(TableError, match="inside the state directory"):
        check_output("memory://trust/in.csv", "memory://trust-state/jobs/x.parquet", "memory:///trust-state/")


# -- 8. checks that can fail after payment come before it ------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_an_unwritable_output_location_fails_before_the_first_batch(
    server: Any, tmp_path: Path, state_dir: str
) -> None:
    source = write_csv(tmp_path / "in.csv", ["good", "bad"])
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the output's folder should be")
    output = blocker / "out" / "result.parquet"
    with pytest.raises(TableError, match=r"cannot be written.*a-file") as caught:
        run(server, source, str(output), state_dir, overwrite=True)
    assert "nothing was sent" in str(caught.value)
    assert nothing_sent(server)


def test_the_writability_probe_makes_the_parent_and_leaves_nothing(tmp_path: Path) -> None:
    output = tmp_path / "new" / "deeper" / "out.parquet"
    check_output_writable(str(output))
    assert output.parent.is_dir()
    assert list(output.parent.iterdir()) == []


# -- 10. unbounded inputs are bounded --------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        '{{ "x" * 10**9 }}',
        '{{ ["x"] * 10**9 }}',
        '{{ "x"|center(1000000000) }}',
        '{{ "%0999999999d" % n }}',
        '{{ "{:>{w}}".format(n, w=10**9) }}',
        '{% set ns = namespace(s="x") %}{% for _ in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}',
        '{% set ns = namespace(s="x") %}{% for _ in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}',
        '{% for i in range(100000) %}{{ "x" * 7000000 }}{% endfor %}',
    ],
)
def test_a_template_that_grows_without_limit_is_stopped_without_allocating(source: str) -> None:
    rows = pa.table({"id": ["a", "b"], "n": [1, 2]})
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError, match=r"row 0 \(id 'a'\).*longer than 8,000,000 characters"):
            PromptTemplate(source).render_table(rows, id_column="id")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20  # the largest text built stays under the limit, never gigabytes


def test_a_column_longer_than_the_prompt_limit_names_its_row() -> None:
    rows = pa.table({"id": ["a", "b"], "text": ["short", "y" * (MAX_PROMPT_CHARS + 1)]})
    template = PromptTemplate("Say {{ text }}")
    with pytest.raises(TemplateError, match=r"row 11 \(id 'b'\).*longer than"):
        template.check_rendered(rows, None, "id", 10)  # the Arrow path, no Jinja
    with pytest.raises(TemplateError, match=r"row 1 \(id 'b'\).*longer than"):
        template.check_rendered(rows, template.render_table(rows), "id")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_3_mb_cell_is_read_in_csv_and_jsonl(tmp_path: Path, suffix: str) -> None:
    big = "é" + "x" * (3 << 20)
    path = tmp_path / f"big{suffix}"
    if suffix == ".csv":
        path.write_text(f"id,text\n1,short\n2,{big}\n3,end\n", encoding="utf-8")
    else:
        lines = [{"id": 1, "text": "short"}, {"id": 2, "text": big}, {"id": 3, "text": "end"}]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert read_table(str(path)).column("text").to_pylist() == ["short", big, "end"]
    assert read_table(str(path), limit=2).column("text").to_pylist() == ["short", big]
    scan = scan_table(str(path))
    assert sum(batch.num_rows for batch in scan.batches) == 3


def test_a_row_longer_than_the_largest_block_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrow_files, "MAX_BLOCK_SIZE", 1 << 20)
    path = tmp_path / "huge.csv"
    path.write_text("id,text\n0,a\n1," + "x" * (3 << 20) + "\n2,b\n", encoding="utf-8")
    with pytest.raises(TableError, match=r"huge.csv.*a row is too long to read, even in blocks of 1 MB"):
        read_table(str(path))


# -- 12. no crash at exit --------------------------------------------------------------------


@pytest.mark.timeout(900)  # 30 command starts: about 70-115 s on 2 idle cores, far more on a loaded machine
def test_a_failing_estimate_never_aborts_at_exit(tmp_path: Path) -> None:
    """Arrow's CSV reader used to drop the Python file on its own thread at exit: exit 134."""
    source = write_csv(tmp_path / "in.csv", [f"review {i}" for i in range(50)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def once(n: int) -> subprocess.CompletedProcess[str]:
        # A state directory each: runs of one job in one state directory exclude each other (the lease).
        command = [
            sys.executable, "-m", "prefect_llm_batch.cli", "estimate", source, "--prompt", "{{ nosuchcol }}",
            "--model", "gpt-4o-mini", "--state-dir", str(tmp_path / f"state-{n}"),
        ]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, check=False)

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        runs = list(pool.map(once, range(30)))
    codes = [r.returncode for r in runs]
    assert codes == [1] * 30, [r.stderr[-300:] for r in runs if r.returncode != 1]
    for r in runs:
        assert "prompt uses column 'nosuchcol', which the table does not have" in r.stderr
        assert "terminate called" not in r.stderr


# -- 13. empty prompts and invalid UTF-8 -----------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_blank_prompts_are_an_error_naming_the_rows_unless_allowed(
    server: Any, tmp_path: Path, state_dir: str
) -> None:
    texts = ["good", "", "bad", " \n ", *["fine"] * 5, *[""] * 7]
    source = write_csv(tmp_path / "in.csv", texts)
    output = str(tmp_path / "out.parquet")
    with pytest.raises(
        InputError, match=r"empty \(or only whitespace\) for 9 row\(s\): row 1, 3, 9, 10, 11 and 4 more"
    ):
        run(server, source, output, state_dir, prompt="{{ text }}")
    with pytest.raises(InputError, match=r"for 9 row\(s\): row 1 \(id 1\), 3 \(id 3\)"):
        run(server, source, output, state_dir, prompt="{% if text %}{{ text }}{% endif %}", id_column="id")
    assert nothing_sent(server)
    run(server, source, output, state_dir, prompt="{{ text }}", allow_empty=True)
    assert pq.read_table(output).num_rows == len(texts)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_invalid_utf8_names_the_column_and_row_unless_replaced(
    server: Any, tmp_path: Path, state_dir: str, suffix: str
) -> None:
    source = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        source.write_bytes(b"id,text\n0,good\n1,fine\n2,bad \xff\xfe bytes\n3,ok\n")
    else:
        source.write_bytes(
            b'{"id":0,"text":"good"}\n{"id":1,"text":"fine"}\n{"id":2,"text":"bad \xff\xfe bytes"}\n'
            b'{"id":3,"text":"ok"}\n'
        )
    output = str(tmp_path / "out.parquet")
    with pytest.raises(TableError, match=r"column 'text' holds text that is not valid UTF-8, first in row 2"):
        run(server, str(source), output, state_dir)
    assert nothing_sent(server)
    run(server, str(source), output, state_dir, invalid_utf8="replace")
    written = pq.read_table(output)
    assert written.column("text").to_pylist() == ["good", "fine", "bad \ufffd\ufffd bytes", "ok"]
    assert written.column("response").null_count == 0


def test_replacing_invalid_utf8_keeps_valid_rows_and_other_columns(tmp_path: Path) -> None:
    write_bytes_atomic(str(tmp_path / "x.csv"), b"a,b\n\xc3\xa9,1\nz\xc3,2\n")
    with pytest.raises(TableError, match=r"column 'a'.*first in row 1"):
        read_table(str(tmp_path / "x.csv"))
    fixed = read_table(str(tmp_path / "x.csv"), invalid_utf8="replace")
    assert fixed.to_pylist() == [{"a": "é", "b": 1}, {"a": "z\ufffd", "b": 2}]


class _SlowAfterFirstBlock(io.BytesIO):
    """A file whose reads after the first block take a while: Arrow's read-ahead is still in one
    when the rows asked for are read."""

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            time.sleep(0.3)
        return super().read(size)


def test_arrow_lets_go_of_the_file_before_a_read_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What made the abort at exit possible: a Python file still held by Arrow's threads (here the
    CSV reader's read-ahead, made slow) after the read returned."""
    data = b"id,text\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(20_000))
    monkeypatch.setattr(csv_reading, "CSV_BLOCK_SIZE", 1 << 14)
    opened: list[weakref.ref[io.BytesIO]] = []

    @contextlib.contextmanager
    def slow_open(source: str, options: Any, *, compression: str | None) -> Iterator[io.BytesIO]:
        file = _SlowAfterFirstBlock(data)
        opened.append(weakref.ref(file))
        yield file

    monkeypatch.setattr(csv_reading, "open_source", slow_open)
    for limit in (5, None):
        opened.clear()
        rows = read_table(str(tmp_path / "any.csv"), limit=limit)
        assert rows.num_rows == (limit or 20_000)
        assert [ref() for ref in opened] == [None] * len(opened)
