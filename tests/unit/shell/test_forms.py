"""The flows' parameter forms in the Prefect UI, as ``prefect deploy`` builds them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prefect.flows import Flow
from prefect.utilities.callables import parameter_schema

from prefect_llm_batch.flows import collect_jobs, enrich_table, run_llm_batch_job

FLOWS = [enrich_table, run_llm_batch_job, collect_jobs]
MARKUP = re.compile(r":[a-z]+:`|``|~prefect_llm_batch|\n")


def properties(flow: Flow[..., Any]) -> dict[str, Any]:
    """The parameter schema ``prefect deploy`` sends as the deployment's ``parameter_openapi_schema``."""
    return parameter_schema(flow).model_dump_for_openapi()["properties"]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_parameter_has_a_readable_title(flow: Flow[..., Any]) -> None:
    for name, prop in properties(flow).items():
        title = prop["title"]
        assert "_" not in title and title[0].isupper(), (name, title)
    assert properties(enrich_table)["max_requests_per_batch"]["title"] == "Max requests per batch"
    assert properties(enrich_table)["base_url"]["title"] == "Base URL"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_description_is_plain_text(flow: Flow[..., Any]) -> None:
    for name, prop in properties(flow).items():
        assert prop.get("description"), name
        assert not MARKUP.search(prop["description"]), (name, prop["description"])
    dry_run = properties(enrich_table)["dry_run"]["description"]
    assert dry_run.startswith("Plan the job and return its Estimate (rows, unique requests")


def test_python_only_parameters_and_types_are_not_in_the_form() -> None:
    props = properties(enrich_table)
    assert "parser" not in props
    # a pydantic model class is for Python callers: the form offers a JSON Schema (object or text)
    assert props["response_format"]["anyOf"] == [
        {"additionalProperties": True, "type": "object"},
        {"type": "string"},
        {"type": "null"},
    ]


def test_the_flows_still_take_python_only_parameters() -> None:
    assert "parser" in enrich_table.fn.__code__.co_varnames
    given = {"source": "a.csv", "output": "b.parquet", "prompt": "{{ x }}", "model": "m", "parser": str}
    assert enrich_table.validate_parameters(given)["parser"] is str


@pytest.mark.parametrize("flow", [enrich_table, collect_jobs], ids=lambda f: f.name)
def test_credentials_says_it_takes_every_providers_block(flow: Flow[..., Any]) -> None:
    credentials = properties(flow)["credentials"]
    for title in ("OpenAI", "Anthropic", "Gemini"):
        assert f"LLM Batch {title} Credentials" in credentials["description"]
    refs = {item.get("$ref") for item in credentials["anyOf"]}
    assert refs == {
        "#/definitions/OpenAIBatchCredentials", "#/definitions/AnthropicBatchCredentials",
        "#/definitions/GeminiBatchCredentials", None,
    }  # fmt: skip
