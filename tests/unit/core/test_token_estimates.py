"""Token estimates of request lines: the many-lines sum equals the per-line estimate, images or not."""

from __future__ import annotations

import pytest

from prefect_llm_batch.images import IMAGE_TOKENS
from prefect_llm_batch.jobs.chunks import estimate_tokens, estimate_tokens_of

TEXT = b'{"custom_id":"r1","body":{"messages":[{"role":"user","content":"' + b"a review " * 40 + b'"}]}}\n'
DATA_URL = b'{"custom_id":"r2","body":{"image_url":{"url":"data:image/png;base64,' + b"Q" * 40_000 + b'"}}}\n'
GEMINI = (
    b'{"key":"r3","request":{"contents":[{"parts":[{"inlineData":{"data":"' + b"Q" * 8_000 + b'"}}]}]}}\n'
)


@pytest.mark.parametrize(
    "lines", [[TEXT] * 3, [TEXT, DATA_URL], [GEMINI, TEXT, DATA_URL], [b"tiny"], []], ids=str
)
def test_the_sum_over_many_lines_is_each_lines_estimate(lines: list[bytes]) -> None:
    assert estimate_tokens_of(lines) == sum(estimate_tokens(line) for line in lines)
    assert estimate_tokens_of(lines, b"".join(lines)) == sum(estimate_tokens(line) for line in lines)


def test_an_image_counts_its_flat_token_price_not_its_base64_length() -> None:
    assert estimate_tokens_of([DATA_URL]) < len(DATA_URL) // 4
    assert estimate_tokens_of([DATA_URL]) >= IMAGE_TOKENS
