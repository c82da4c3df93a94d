"""The LLM Batch Gemini Credentials block."""

from __future__ import annotations

import pytest
from prefect.blocks.core import Block

from prefect_llm_batch.blocks import GeminiBatchCredentials, OpenAIBatchCredentials
from prefect_llm_batch.errors import ConfigError
from prefect_llm_batch.providers import gemini_target, openai_target
from prefect_llm_batch.spec import JobSpec
from prefect_llm_batch.tasks import provider_for
from tests.unit.shell.test_blocks import OfflineBlockStandardTestSuite

SECRET = "fake-key-gemini-never-print-me"


class TestGeminiBatchCredentialsStandards(OfflineBlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return GeminiBatchCredentials


def test_the_block_type_name_and_client() -> None:
    creds = GeminiBatchCredentials(api_key=SECRET)
    assert GeminiBatchCredentials.get_block_type_name() == "LLM Batch Gemini Credentials"
    with creds.get_client(target=gemini_target("https://g.example")) as provider:
        assert (provider.name, provider.key_base_url) == ("gemini", "https://g.example")
    assert SECRET not in repr(creds)


@pytest.mark.parametrize(
    ("creds", "target"),
    [
        (OpenAIBatchCredentials(api_key=SECRET), gemini_target("https://g.example")),
        (GeminiBatchCredentials(api_key=SECRET), openai_target("https://o.example/v1")),
    ],
)
def test_a_gemini_key_goes_only_to_gemini(creds: Block, target: object) -> None:
    spec = JobSpec(prompt="{{ text }}", model="m")
    with pytest.raises(ConfigError, match="cannot be used with the") as info:
        provider_for(target, spec, creds)  # type: ignore[arg-type]
    assert SECRET not in str(info.value)
