"""Content negotiation (mvmic.service.negotiation), the one Accept parser of the /v1 routes and WADO-RS:
weights, q=0, and the most specific range (RFC 9110 12.4.2, 12.5.1)."""

import pytest
from fastapi import HTTPException

from mvmic.service.negotiation import media_ranges, negotiate

OFFERED = ("application/json", "application/octet-stream", "application/dicom")


@pytest.mark.parametrize(("accept", "chosen"), [
    (None, "application/json"),
    ("", "application/json"),
    ("*/*", "application/json"),
    ("application/dicom", "application/dicom"),
    ("application/json;q=0.5, application/dicom", "application/dicom"),
    ("application/octet-stream;q=0.2, application/json;q=0.1", "application/octet-stream"),
    ("application/json;q=0, */*", "application/octet-stream"),  # the specific range's 0 outweighs */*
    ("application/*;q=0.3, application/dicom;q=0.9", "application/dicom"),
    ("application/dicom;q=nonsense", "application/dicom"),  # a q that is not a number counts as 1
    ("application/json;q=nan, application/octet-stream;q=0.5", "application/json"),  # NaN too
])
def test_the_offered_type_of_the_highest_weight_is_chosen(accept: str | None, chosen: str) -> None:
    assert negotiate(accept, OFFERED) == chosen


@pytest.mark.parametrize("accept", ["image/png", "application/json;q=0", "*/*;q=0", "text/*",
                                    "image/png,", "application/json;q=0,", ";;;,,,"])  # empty elements: no range
def test_nothing_acceptable_is_406_naming_what_the_route_answers(accept: str) -> None:
    with pytest.raises(HTTPException) as refused:
        negotiate(accept, ("application/json",))
    assert refused.value.status_code == 406 and "application/json" in refused.value.detail


def test_media_ranges_rank_by_weight_keep_header_order_among_equals_and_drop_q0() -> None:
    dicom = 'multipart/related; type="application/dicom"'
    ranges = media_ranges(f"{dicom}; transfer-syntax=1.2.840.10008.1.2.4.80;q=0.5, {dicom}, "
                          f"{dicom}; transfer-syntax=1.2.840.10008.1.2.4.90;q=0, */*;q=0.5")
    assert [(media.type, media.parameters.get("transfer-syntax"), media.q) for media in ranges] == [
        ("multipart/related", None, 1.0),
        ("multipart/related", "1.2.840.10008.1.2.4.80", 0.5),
        ("*/*", None, 0.5)]
    assert all("q" not in media.parameters for media in ranges)
