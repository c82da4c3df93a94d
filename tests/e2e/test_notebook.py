"""enrich() for notebooks: inside a running event loop, and the example notebook end to end."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from pathlib import Path

import pandas as pd
import pytest

from prefect_llm_batch import enrich
from prefect_llm_batch.errors import InputError
from prefect_llm_batch.jobs import JobSummary
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig
from tests.paths import EXAMPLES


def test_enrich_inside_a_running_event_loop_keeps_index_and_rows(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {"text": ["I love it, great", "awful and broken", "I love it, great"]}, index=[10, 20, 30]
    )

    async def in_loop() -> tuple[pd.DataFrame, JobSummary]:
        result = enrich(
            df, "Sentiment of: {{ text }}", "gpt-4o-mini", state_dir=str(tmp_path), return_summary=True
        )
        assert isinstance(result, tuple)
        return result

    out, summary = asyncio.run(in_loop())
    assert list(out.index) == [10, 20, 30]
    assert out["text"].tolist() == df["text"].tolist()
    assert out["response"].tolist() == ["positive", "negative", "positive"]
    assert summary.unique_requests == 2

    again = enrich(df, "Sentiment of: {{ text }}", "gpt-4o-mini", state_dir=str(tmp_path), progress=False)
    assert isinstance(again, pd.DataFrame)
    assert again["response"].tolist() == out["response"].tolist()


def test_enrich_with_a_fresh_cache_state_answers_from_cache(tmp_path: Path) -> None:
    df = pd.DataFrame({"text": ["one", "two"]})
    enrich(df, "Summarise {{ text }}", "m", state_dir=str(tmp_path), progress=False)
    more = pd.DataFrame({"text": ["one", "two", "three"]})
    out = enrich(more, "Summarise {{ text }}", "m", state_dir=str(tmp_path), progress=False)
    assert isinstance(out, pd.DataFrame)
    assert out["response_cached"].tolist() == [True, True, False]


@pytest.mark.timeout(240)
def test_example_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PREFECT_LLM_BATCH_STATE_DIR", str(tmp_path / "state"))
    notebook = nbformat.read(EXAMPLES / "enrich_dataframe.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # no warning (rich asks for ipywidgets in Jupyter): nothing on stderr
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not [o for o in outputs if "Warning" in str(o)]
    # the live progress bar ends at all requests done
    shown = [o.get("data", {}) for o in outputs if o.output_type == "display_data"]
    if importlib.util.find_spec("ipywidgets") is None:  # the plain-text bar, updated in place
        bars = [str(data.get("text/plain", "")) for data in shown]
        assert any(re.search(r"requests \[#+\]\s+20/20", bar) for bar in bars), bars
    else:  # the notebook extra: rich's bar in a widget
        assert any("application/vnd.jupyter.widget-view+json" in data for data in shown), shown
    assert any(
        "response_cached" in str(o.get("data", "")) or "True" in str(o.get("data", "")) for o in outputs
    )


def test_example_notebook_is_saved_with_its_outputs() -> None:
    """Readers of the repository see what each cell gives, the progress bar included, with no
    error and nothing from the machine it ran on."""
    import nbformat

    notebook = nbformat.read(EXAMPLES / "enrich_dataframe.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count and cell.outputs for cell in code)
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error" or "Warning" in str(o)]
    assert any("20/20" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert not re.search(r"/(tmp|home|root|work|Users)/", str(outputs))


def test_enrich_sends_images_with_relative_paths_read_from_the_callers_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.e2e.test_images_e2e import data_url, openai_bodies, png

    key = "fake-key-notebook-images"
    work = tmp_path / "work"
    (work / "imgs").mkdir(parents=True)
    red, blue = png(1, 1, (255, 0, 0)), png(2, 2, (0, 0, 255))
    (work / "imgs" / "red.png").write_bytes(red)
    (tmp_path / "blue.png").write_bytes(blue)
    monkeypatch.chdir(work)
    df = pd.DataFrame(
        {"text": ["red", "blue", "none"], "img": ["imgs/red.png", str(tmp_path / "blue.png"), None]},
        index=[7, 8, 9],
    )
    with FakeProviderServer(FakeServerConfig(api_key=key, validating_seconds=0)) as server:
        out = enrich(
            df, "Describe {{ text }}", "vision-model", image_columns=["img"], allow_missing_images=True,
            provider="openai", base_url=server.base_url, api_key=key, state_dir=str(tmp_path / "state"),
            poll_interval=0.02, progress=False,
        )  # fmt: skip
        bodies = openai_bodies(server)
    assert isinstance(out, pd.DataFrame)
    images = {}
    for body in bodies:
        content = body["messages"][0]["content"]
        if isinstance(content, str):  # a row without an image: text alone
            images[content] = None
        else:
            text, image = content
            images[text["text"]] = image["image_url"]["url"]
    assert images == {
        "Describe red": data_url("image/png", red),
        "Describe blue": data_url("image/png", blue),
        "Describe none": None,
    }
    assert out["img"].tolist() == df["img"].tolist()  # the paths as given
    assert list(out.index) == [7, 8, 9] and out["response_error_kind"].isna().all()


def test_enrich_names_the_row_of_a_missing_image_before_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "fake-key-notebook-images"
    monkeypatch.chdir(tmp_path)
    df = pd.DataFrame({"text": ["a"], "img": ["imgs/missing.png"]})
    with (
        FakeProviderServer(FakeServerConfig(api_key=key)) as server,
        pytest.raises(InputError, match=r"row 0, image column 'img' .*missing\.png"),
    ):
        enrich(
            df, "Describe {{ text }}", "vision-model", image_columns=["img"], provider="openai",
            base_url=server.base_url, api_key=key, state_dir=str(tmp_path / "state"), progress=False,
        )  # fmt: skip
    assert server.stats.requests_received == 0 and server.stats.uploads == 0
