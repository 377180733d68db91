"""multipart/related bodies as STOW-RS requests and WADO-RS answers carry them."""

import pytest

from mvmic.pacs.multipart import MultipartError, parse_media_type, parse_related, related_body


def test_parts_come_back_byte_for_byte_even_when_they_look_like_boundaries() -> None:
    contents = [b"DICM\x00\x01", b"\r\n--not-the-boundary\r\n", b""]
    body, content_type = related_body(contents, "application/dicom")
    parts = parse_related(body, content_type)
    assert [part.content for part in parts] == contents
    assert {part.content_type for part in parts} == {"application/dicom"}


def test_preamble_part_headers_and_root_type() -> None:
    body = (b"a preamble\r\n--B\r\nContent-Type: Application/DICOM; charset=x\r\nContent-Location: a\r\n\r\none"
            b"\r\n--B\r\n\r\ntwo\r\n--B--\r\nan epilogue")
    parts = parse_related(body, 'multipart/related; type="application/octet-stream"; boundary="B"')
    assert [(part.content_type, part.content) for part in parts] == [("application/dicom", b"one"),
                                                                      ("application/octet-stream", b"two")]


@pytest.mark.parametrize(("body", "content_type", "reason"), [
    (b"--B\r\n\r\nx\r\n--B--", "application/dicom", "expected multipart/related"),
    (b"--B\r\n\r\nx\r\n--B--", "multipart/related", "without a boundary"),
    (b"no delimiter at all", "multipart/related; boundary=B", "no part delimited"),
    (b"--B\r\n\r\ncut short", "multipart/related; boundary=B", "without its closing boundary"),
    (b"--B\r\nContent-Type: application/dicom\r\nx\r\n--B--", "multipart/related; boundary=B", "no blank line"),
])
def test_malformed_bodies_are_refused_with_a_reason(body: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(MultipartError, match=reason):
        parse_related(body, content_type)


def test_media_type_parameters_are_unquoted_and_case_folded() -> None:
    media = parse_media_type('Multipart/Related; Type="application/dicom"; transfer-syntax=*')
    assert media.type == "multipart/related"
    assert media.parameters == {"type": "application/dicom", "transfer-syntax": "*"}
