"""multipart/related bodies (RFC 2387), as DICOMweb's STOW-RS requests and WADO-RS responses carry them.

    Content-Type: multipart/related; type="application/dicom"; boundary=B
    body: --B CRLF headers CRLF CRLF part CRLF --B ... CRLF --B--

parse_related splits such a body into parts; related_body builds one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from email.message import Message


class MultipartError(ValueError):
    """A body that is not the multipart/related message its Content-Type announces."""


@dataclass(frozen=True)
class Part:
    content_type: str  # media type without parameters, lower case; the root type when a part gives none
    content: bytes


@dataclass(frozen=True)
class MediaType:
    type: str  # e.g. multipart/related, lower case
    parameters: dict[str, str]  # names lower case, values unquoted


def parse_media_type(header: str) -> MediaType:
    message = Message()
    message["content-type"] = header
    parameters = {name.lower(): value for name, value in message.get_params()[1:]}
    return MediaType(message.get_content_type(), parameters)


def parse_related(body: bytes, content_type: str) -> list[Part]:
    """The parts of a multipart/related body; MultipartError when it is not one."""
    media = parse_media_type(content_type)
    if media.type != "multipart/related":
        raise MultipartError(f"Content-Type {media.type}, expected multipart/related")
    boundary = media.parameters.get("boundary")
    if not boundary:
        raise MultipartError("multipart/related without a boundary parameter")
    root_type = media.parameters.get("type", "application/octet-stream").lower()
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0 or (start > 0 and body[start - 2:start] != b"\r\n"):  # anything before it is a preamble
        raise MultipartError("the body has no part delimited by the boundary of its Content-Type")
    chunks = body[start + len(delimiter):].split(b"\r\n" + delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise MultipartError("the body ends without its closing boundary (--boundary--)")
    return [_part(chunk, root_type) for chunk in chunks[:-1]]


def _part(chunk: bytes, root_type: str) -> Part:
    if not chunk.startswith(b"\r\n"):
        raise MultipartError("a boundary is not followed by a line break")
    if chunk.startswith(b"\r\n\r\n"):  # no headers
        return Part(root_type, chunk[4:])
    head, separator, content = chunk[2:].partition(b"\r\n\r\n")
    if not separator:
        raise MultipartError("a part has no blank line between its headers and its content")
    content_type = root_type
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            content_type = parse_media_type(value.strip()).type
    return Part(content_type, content)


def related_body(parts: list[bytes], part_type: str, part_parameters: list[str] | None = None) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/related message whose parts are all of ``part_type``, each part's
    Content-Type with its own ``part_parameters`` (e.g. 'transfer-syntax=1.2.840.10008.1.2.1') if given."""
    boundary = uuid.uuid4().hex
    pieces = []
    for number, content in enumerate(parts):
        own = f"{part_type}; {part_parameters[number]}" if part_parameters and part_parameters[number] else part_type
        pieces += [f"--{boundary}\r\nContent-Type: {own}\r\n\r\n".encode(), content, b"\r\n"]
    pieces.append(f"--{boundary}--\r\n".encode())
    return b"".join(pieces), f'multipart/related; type="{part_type}"; boundary={boundary}'
