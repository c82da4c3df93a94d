"""Images in rows (pure): one image of a row as a public URL or as bytes with their media type.

A job's image columns (``image_columns``) hold, per cell, an ``http(s)`` URL (passed through as
it is: it is never fetched, so the URL string, not the image, is what the request key covers),
a local path or fsspec URL, a ``data:`` URL, or bytes (a binary column). Bytes become base64 in
the request body, so the request key covers them. Loading the cells is
:mod:`prefect_llm_batch.jobs.images`; each provider puts an :class:`Image` into its own
request shape (:meth:`~prefect_llm_batch.providers.base.BatchProvider.add_images`).

Examples:
    >>> PNG_HEAD = b"\\x89PNG\\r\\n\\x1a\\n"
    >>> image = Image.from_bytes(PNG_HEAD + b"rest")
    >>> image.media_type, image.data_url()[:30]
    ('image/png', 'data:image/png;base64,iVBORw0K')
    >>> Image(url="https://example.com/cat.jpg").data_url()
    'https://example.com/cat.jpg'
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

#: The media types every supported provider accepts (OpenAI, Anthropic, Gemini).
MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

#: Prompt tokens counted per image in estimates, whatever its size: providers price images by
#: their pixels (tiles or patches), not their bytes, and a large image costs about this much
#: (Anthropic: about width x height / 750, near 1,600 for the largest that is not scaled down;
#: OpenAI: 85 to about 1,500 by detail and size; Gemini: 258 per 768 px tile).
IMAGE_TOKENS = 1600

#: Base64 image data as request lines carry it: after ``;base64,`` (a data URL) or as the value
#: of ``"data"`` (Anthropic's base64 source, Gemini's ``inlineData``).
_BASE64_IMAGE = re.compile(rb'(?:;base64,|"data":")([A-Za-z0-9+/]{64,}={0,2})')


def may_carry_images(data: bytes) -> bool:
    """Whether request lines (one or many, joined) may carry base64 image data: False means none does.

    Examples:
        >>> may_carry_images(b'{"url":"data:image/png;base64,AAAA"}'), may_carry_images(b'{"text":"hi"}')
        (True, False)
    """
    return b";base64," in data or b'"data":"' in data


def image_token_adjustment(line: bytes | memoryview) -> int:
    """What to add to a request line's ``bytes / 4`` token estimate for the images it carries:
    each one's base64 text counts :data:`IMAGE_TOKENS` instead of its length / 4 (0 without images).

    Examples:
        >>> line = b'{"url":"data:image/png;base64,' + b"A" * 8000 + b'"}'
        >>> image_token_adjustment(line), image_token_adjustment(b'{"text":"hi"}')
        (-400, 0)
    """
    if isinstance(line, bytes) and not may_carry_images(line):
        return 0  # most lines: two substring searches instead of the pattern's scan (~5x faster)
    adjustment = 0
    for match in _BASE64_IMAGE.finditer(line):
        adjustment += IMAGE_TOKENS - len(match.group(1)) // 4
    return adjustment


def sniff_media_type(data: bytes) -> str | None:
    """The media type of image bytes from their magic number (PNG, JPEG, GIF, WEBP), or None.

    Examples:
        >>> sniff_media_type(b"\\xff\\xd8\\xff\\xe0rest"), sniff_media_type(b"GIF89a..")
        ('image/jpeg', 'image/gif')
        >>> sniff_media_type(b"RIFF\\x00\\x00\\x00\\x00WEBPVP8 "), sniff_media_type(b"%PDF-1.7")
        ('image/webp', None)
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class Image:
    """One image of a row: a public URL, or bytes of a known media type.

    Attributes:
        url: An ``http(s)`` URL passed to the provider as it is (never fetched), or None.
        data: The image's bytes, or None for a URL.
        media_type: The bytes' media type (one of :data:`MEDIA_TYPES`), or None for a URL.
    """

    url: str | None = None
    data: bytes | None = None
    media_type: str | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> Image:
        """An image of ``data``, its media type read from its magic number.

        Raises:
            ValueError: The bytes are not PNG, JPEG, GIF or WEBP (the message says what they start with).
        """
        media_type = sniff_media_type(data)
        if media_type is None:
            head = data[:8]
            raise ValueError(
                f"not a PNG, JPEG, GIF or WEBP image ({len(data)} bytes starting with {head!r})"
                if data
                else "an empty image (0 bytes)"
            )
        return cls(data=data, media_type=media_type)

    @classmethod
    def from_data_url(cls, text: str) -> Image:
        """An image of a ``data:<type>;base64,<data>`` URL (the type is read from the bytes).

        Raises:
            ValueError: Not a base64 data URL of a PNG, JPEG, GIF or WEBP image.
        """
        head, sep, payload = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ValueError("a data: URL must be 'data:<media type>;base64,<data>'")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"the data: URL's base64 is invalid ({exc})") from None
        return cls.from_bytes(data)

    @property
    def size(self) -> int:
        """The image's size in bytes (0 for a URL, which is not fetched)."""
        return len(self.data) if self.data is not None else 0

    def base64(self) -> str:
        """The bytes in base64 (standard alphabet, padded).

        Raises:
            ValueError: The image is a URL.
        """
        if self.data is None:
            raise ValueError("a URL image has no bytes")
        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        """The URL as it is, or the bytes as a ``data:<media type>;base64,...`` URL."""
        if self.url is not None:
            return self.url
        return f"data:{self.media_type};base64,{self.base64()}"


def is_public_url(text: str) -> bool:
    """True for an ``http://`` or ``https://`` URL (passed to the provider, never fetched).

    Examples:
        >>> is_public_url("https://x/cat.png"), is_public_url("s3://bucket/cat.png")
        (True, False)
    """
    return text[:8].lower().startswith(("http://", "https://"))
