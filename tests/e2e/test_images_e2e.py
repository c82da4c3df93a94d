"""Images in rows (``image_columns``): each provider's image parts, as the fake server received
them over real HTTP; bad images fail before anything is sent; image bytes are in the request key."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.errors import InputError
from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "fake-key-images"

#: A real 1x1 GIF (two-colour table, one LZW-coded pixel).
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour (8-bit RGB, no filter), written with zlib."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    for env in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.setenv(env, KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=7)) as srv:
        yield srv


@pytest.fixture
def folder(tmp_path: Path) -> dict[str, bytes]:
    """A table next to an image folder: rows name their images by paths relative to the table."""
    images = {"imgs/red.png": png(2, 2, (255, 0, 0)), "imgs/dot.gif": GIF}
    for name, data in images.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    pq.write_table(
        pa.table({"id": [1, 2], "text": ["a red square", "a dot"], "img": list(images)}),
        tmp_path / "in.parquet",
    )
    return images


def run(server: Any, tmp_path: Path, provider: str = "openai", name: str = "out", **kwargs: Any) -> pa.Table:
    base_url = {
        "openai": server.base_url,
        "anthropic": server.anthropic_base_url,
        "gemini": server.gemini_base_url,
    }[provider]
    options: dict[str, Any] = {
        "source": str(tmp_path / "in.parquet"), "image_columns": ["img"], "model": "vision-model",
        "state_dir": str(tmp_path / "state"), "max_error_rate": 1.0, "max_attempts": 1,
    }  # fmt: skip
    options.update(kwargs)
    out = tmp_path / f"{name}.parquet"
    enrich_table(
        output=str(out), prompt="Describe {{ text }}", provider=provider, base_url=base_url,
        poll_interval=0.05, retry_backoff=0, id_column="id", **options,
    )  # fmt: skip
    return pq.read_table(out)


def openai_bodies(server: Any) -> list[dict[str, Any]]:
    return [
        orjson.loads(raw)["body"]
        for batch in server.batches.values()
        for raw in batch.input_data.splitlines()
        if raw.strip()
    ]


def by_text(bodies: list[dict[str, Any]], text: str, find: Any) -> dict[str, Any]:
    return next(body for body in bodies if text in orjson.dumps(find(body)).decode())


def test_images_from_a_local_folder_become_base64_data_urls_in_openai_chat_bodies(
    server: Any, tmp_path: Path, folder: dict[str, bytes]
) -> None:
    table = run(server, tmp_path)
    bodies = openai_bodies(server)
    assert len(bodies) == 2
    body = by_text(bodies, "a red square", lambda b: b["messages"])
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe a red square"},
                {"type": "image_url", "image_url": {"url": data_url("image/png", folder["imgs/red.png"])}},
            ],
        }
    ]
    gif = by_text(bodies, "a dot", lambda b: b["messages"])["messages"][0]["content"][1]
    assert gif == {"type": "image_url", "image_url": {"url": data_url("image/gif", GIF)}}
    assert table.column("response_error_kind").to_pylist() == [None, None]
    assert all(table.column("response").to_pylist())


def test_image_urls_pass_through_unfetched_as_responses_input_images(server: Any, tmp_path: Path) -> None:
    urls = ["https://images.example/cat.png", "http://images.example/dog.jpg"]
    pq.write_table(pa.table({"id": [1, 2], "text": ["cat", "dog"], "img": urls}), tmp_path / "in.parquet")
    table = run(server, tmp_path, endpoint="responses")
    body = by_text(openai_bodies(server), "Describe cat", lambda b: b["input"])
    assert body["input"] == [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Describe cat"},
                {"type": "input_image", "image_url": urls[0], "detail": "auto"},
            ],
        }
    ]
    assert table.column("response_error_kind").to_pylist() == [None, None]


def test_anthropic_bodies_carry_base64_image_blocks_and_url_sources(
    server: Any, tmp_path: Path, folder: dict[str, bytes]
) -> None:
    url = "https://images.example/cat.png"
    pq.write_table(
        pa.table({"id": [1, 2], "text": ["a red square", "a cat"], "img": ["imgs/red.png", url]}),
        tmp_path / "in.parquet",
    )
    table = run(server, tmp_path, provider="anthropic", model="claude-3-5-haiku-latest")
    requests = [r["params"] for batch in server.message_batches.values() for r in batch.requests]
    square = by_text(requests, "a red square", lambda b: b["messages"])
    assert square["messages"][0]["content"] == [
        {"type": "text", "text": "Describe a red square"},
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/png",
                "data": base64.b64encode(folder["imgs/red.png"]).decode(),
            },
        },
    ]
    cat = by_text(requests, "a cat", lambda b: b["messages"])
    assert cat["messages"][0]["content"][1] == {"type": "image", "source": {"type": "url", "url": url}}
    assert table.column("response_error_kind").to_pylist() == [None, None]


def test_gemini_requests_carry_inline_data_parts(
    server: Any, tmp_path: Path, folder: dict[str, bytes]
) -> None:
    table = run(server, tmp_path, provider="gemini", model="gemini-2.5-flash")
    requests = [r for batch in server.gemini_batches.values() for r in batch.requests]
    square = by_text(requests, "a red square", lambda b: b["contents"])
    assert square["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "Describe a red square"},
                {
                    "inlineData": {
                        "mimeType": "image/png",
                        "data": base64.b64encode(folder["imgs/red.png"]).decode(),
                    }
                },
            ],
        }
    ]
    assert table.column("response_error_kind").to_pylist() == [None, None]


def test_gemini_refuses_image_urls_before_sending(server: Any, tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"id": [1], "text": ["cat"], "img": ["https://images.example/cat.png"]}),
        tmp_path / "in.parquet",
    )
    with pytest.raises(InputError, match=r"row 0 \(id 1\), image column 'img'.*takes no image URLs"):
        run(server, tmp_path, provider="gemini", model="gemini-2.5-flash")
    assert server.stats.creates == server.stats.uploads == server.stats.requests_received == 0


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("imgs/missing.png", r"row 1 \(id 2\), image column 'img' \('.*imgs/missing.png'\).*no such file"),
        (
            "imgs/notes.txt",
            r"row 1 \(id 2\), image column 'img' \('.*notes.txt'\): not a PNG, JPEG, GIF or WEBP",
        ),
        (None, r"row 1 \(id 2\), image column 'img' is null.*allow_missing_images"),
    ],
)
def test_a_missing_unreadable_or_null_image_is_an_error_naming_its_row_before_any_request(
    server: Any, tmp_path: Path, folder: dict[str, bytes], cell: str | None, expected: str
) -> None:
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    pq.write_table(
        pa.table({"id": [1, 2], "text": ["a", "b"], "img": ["imgs/red.png", cell]}, schema=None),
        tmp_path / "in.parquet",
    )
    with pytest.raises(InputError, match=expected):
        run(server, tmp_path)
    assert server.stats.creates == server.stats.uploads == server.stats.requests_received == 0
    assert not server.batches


def test_allow_missing_images_sends_a_null_cell_without_an_image(
    server: Any, tmp_path: Path, folder: dict[str, bytes]
) -> None:
    pq.write_table(
        pa.table({"id": [1, 2], "text": ["a red square", "nothing"], "img": ["imgs/red.png", None]}),
        tmp_path / "in.parquet",
    )
    table = run(server, tmp_path, allow_missing_images=True)
    bodies = openai_bodies(server)
    plain = by_text(bodies, "nothing", lambda b: b["messages"])
    assert plain["messages"] == [{"role": "user", "content": "Describe nothing"}]  # a text-only request
    assert len(by_text(bodies, "a red square", lambda b: b["messages"])["messages"][0]["content"]) == 2
    assert table.column("response_error_kind").to_pylist() == [None, None]


def test_an_image_over_the_providers_limit_is_an_error_before_sending(server: Any, tmp_path: Path) -> None:
    big = png(1, 1, (0, 0, 0)) + b"\x00" * (4 * 1024 * 1024)  # over Anthropic's 5 MB of base64
    pq.write_table(pa.table({"id": [1], "text": ["big"], "img": [big]}), tmp_path / "in.parquet")
    with pytest.raises(
        InputError, match=r"row 0 \(id 1\), image column 'img': the image is \d+ bytes, more than"
    ):
        run(server, tmp_path, provider="anthropic", model="claude-3-5-haiku-latest")
    assert server.stats.creates == server.stats.requests_received == 0


def test_image_bytes_are_in_the_request_key(server: Any, tmp_path: Path) -> None:
    """A binary column (images stored in Parquet): changing one row's bytes sends that row alone
    again, under a new key; the other row's answer comes from the cache."""
    first = [png(1, 1, (1, 2, 3)), png(1, 1, (4, 5, 6))]
    pq.write_table(pa.table({"id": [1, 2], "text": ["x", "y"], "img": first}), tmp_path / "in.parquet")
    run(server, tmp_path, name="first")
    sent_first = {
        orjson.loads(raw)["custom_id"] for b in server.batches.values() for raw in b.input_data.splitlines()
    }
    assert len(sent_first) == 2

    changed = [first[0], png(1, 1, (7, 8, 9))]
    pq.write_table(pa.table({"id": [1, 2], "text": ["x", "y"], "img": changed}), tmp_path / "in.parquet")
    table = run(server, tmp_path, name="second")
    sent = [orjson.loads(raw) for b in server.batches.values() for raw in b.input_data.splitlines()]
    new = [line for line in sent if line["custom_id"] not in sent_first]
    assert len(sent) == 3 and len(new) == 1
    assert new[0]["body"]["messages"][0]["content"][1]["image_url"]["url"] == data_url(
        "image/png", changed[1]
    )
    assert table.column("response_cached").to_pylist() == [True, False]


def test_image_bytes_count_toward_the_batch_byte_limit(server: Any, tmp_path: Path) -> None:
    images = [png(1, 1, (i, i, i)) + b"\x00" * 600 for i in range(3)]  # each line > half of 2048 bytes
    pq.write_table(
        pa.table({"id": [1, 2, 3], "text": ["a", "b", "c"], "img": images}), tmp_path / "in.parquet"
    )
    table = run(server, tmp_path, max_batch_bytes=2048)
    assert len(server.batches) == 3
    assert all(len(batch.input_data) <= 2048 for batch in server.batches.values())
    assert table.column("response_error_kind").to_pylist() == [None, None, None]


def test_cli_image_column_sends_the_images_and_names_a_missing_one(
    server: Any, tmp_path: Path, folder: dict[str, bytes]
) -> None:
    from typer.testing import CliRunner

    from prefect_llm_batch.cli import app

    def invoke(out: str, *more: str) -> Any:
        return CliRunner().invoke(
            app,
            ["run", str(tmp_path / "in.parquet"), str(tmp_path / out), "--prompt", "Describe {{ text }}",
             "--model", "vision-model", "--provider", "openai", "--base-url", server.base_url,
             "--image-column", "img", "--state-dir", str(tmp_path / "state"), "--poll-interval", "0.05",
             *more],
        )  # fmt: skip

    result = invoke("cli.parquet")
    assert result.exit_code == 0, result.output
    urls = sorted(body["messages"][0]["content"][1]["image_url"]["url"] for body in openai_bodies(server))
    assert urls == sorted(data_url(kind, folder[name]) for kind, name in
                          (("image/png", "imgs/red.png"), ("image/gif", "imgs/dot.gif")))  # fmt: skip

    (tmp_path / "imgs" / "dot.gif").unlink()
    pq.write_table(
        pa.table({"id": [1, 2], "text": ["a", "b"], "img": ["imgs/red.png", "imgs/dot.gif"]}),
        tmp_path / "in.parquet",
    )
    before = server.stats.requests_received
    result = invoke("cli2.parquet")
    assert result.exit_code == 1, result.output
    assert "row 1, image column 'img'" in " ".join(result.output.split())
    assert server.stats.requests_received == before


def test_an_image_counts_a_fixed_number_of_tokens_in_the_estimate_not_its_base64_length(
    server: Any, tmp_path: Path
) -> None:
    from prefect_llm_batch.images import IMAGE_TOKENS

    big = png(1, 1, (0, 0, 0)) + b"\x00" * 60_000  # 80,000 characters of base64: 20,000 tokens by length
    pq.write_table(
        pa.table({"id": [1, 2], "text": ["a", "b"], "img": [big, big[:-1]]}), tmp_path / "in.parquet"
    )
    options: dict[str, Any] = {
        "image_columns": ["img"],
        "state_dir": str(tmp_path / "state"),
        "dry_run": True,
    }
    estimate = enrich_table(
        source=str(tmp_path / "in.parquet"), output=str(tmp_path / "o.parquet"), prompt="Describe {{ text }}",
        model="gpt-4o-mini", provider="openai", base_url=server.base_url, **options,
    )  # fmt: skip
    assert 2 * IMAGE_TOKENS <= estimate.input_tokens < 2 * IMAGE_TOKENS + 200
    assert server.stats.requests_received == 0


def test_an_image_file_changed_in_place_is_sent_again_under_a_new_key(
    server: Any, tmp_path: Path, folder: dict[str, bytes]
) -> None:
    """The job's identity covers the image files (size, time): a rerun after one file changed is a
    new job, which sends that row alone (its new bytes) and takes the other from the cache."""
    run(server, tmp_path, name="first")
    sent_first = {
        orjson.loads(raw)["custom_id"] for b in server.batches.values() for raw in b.input_data.splitlines()
    }
    blue = png(3, 3, (0, 0, 255))
    (tmp_path / "imgs" / "red.png").write_bytes(blue)
    table = run(server, tmp_path, name="second")
    sent = [orjson.loads(raw) for b in server.batches.values() for raw in b.input_data.splitlines()]
    new = [line for line in sent if line["custom_id"] not in sent_first]
    assert len(new) == 1
    assert new[0]["body"]["messages"][0]["content"][1]["image_url"]["url"] == data_url("image/png", blue)
    assert table.column("response_cached").to_pylist() == [False, True]


def test_with_a_model_per_row_each_models_batch_carries_its_own_rows_images(
    server: Any, tmp_path: Path
) -> None:
    # Rows of two models interleaved: each model's group is laid out from its rows' positions, so
    # each body must carry the image of its own row, not of the row at the same place in the slice.
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    names = []
    for i, rgb in enumerate(colours):
        (tmp_path / f"{i}.png").write_bytes(png(1, 1, rgb))
        names.append(f"{i}.png")
    pq.write_table(
        pa.table({
            "id": [0, 1, 2, 3], "text": ["r0", "r1", "r2", "r3"], "img": names,
            "model": ["model-a", "model-b", "model-b", "model-a"],
        }),
        tmp_path / "in.parquet",
    )  # fmt: skip
    table = run(server, tmp_path, model="", model_column="model")
    assert len(server.batches) == 2
    for batch in server.batches.values():
        lines = [orjson.loads(raw) for raw in batch.input_data.splitlines() if raw.strip()]
        assert len({line["body"]["model"] for line in lines}) == 1
        for line in lines:
            text, image = line["body"]["messages"][0]["content"]
            row = int(text["text"].removeprefix("Describe r"))
            assert image["image_url"]["url"] == data_url("image/png", png(1, 1, colours[row]))
            assert line["body"]["model"] == ["model-a", "model-b", "model-b", "model-a"][row]
    assert table.column("response_error_kind").to_pylist() == [None] * 4
