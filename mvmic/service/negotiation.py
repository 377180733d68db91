"""Content negotiation: the media ranges of an Accept header, ranked (RFC 9110 12.5.1).

    "application/json;q=0.5, application/dicom" --media_ranges--> [application/dicom (q 1), application/json (q 0.5)]

The codec routes answer with the offered type the header ranks highest (``negotiate``); the DICOMweb gateway
reads the transfer syntaxes of the ``multipart/related; type="application/dicom"`` ranges in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastapi import HTTPException, status

from mvmic.pacs.multipart import parse_media_type


@dataclass(frozen=True)
class MediaRange:
    type: str  # lower case, e.g. "application/dicom", "application/*", "*/*"
    parameters: dict[str, str]  # names lower case; without q
    q: float  # the weight, 0 to 1

    def matches(self, media_type: str) -> bool:
        return self.type in (media_type, "*/*", media_type.split("/")[0] + "/*")


def media_ranges(accept: str | None) -> list[MediaRange]:
    """The ranges of ``accept`` with a weight above 0, higher q first and in header order among equals
    (RFC 9110 12.4.2: q=0 is "not acceptable"; a q that is not a number counts as 1). No header, or an
    empty one, is ``*/*``."""
    return sorted((media for media in _ranges(accept) if media.q > 0), key=lambda media: -media.q)


def negotiate(accept: str | None, offered: tuple[str, ...]) -> str:
    """The offered type of the highest weight, the first offered among equals; a type's weight is that of the
    most specific range that matches it (RFC 9110 12.5.1: "application/json;q=0, */*" refuses JSON).
    HTTP 406 when every offered type weighs 0."""
    ranges = _ranges(accept)
    weights = []
    for media_type in offered:
        matching = [media for media in ranges if media.matches(media_type)]
        most_specific = max(matching, key=lambda media: 2 - media.type.count("*"), default=None)
        weights.append(0.0 if most_specific is None else most_specific.q)
    best = max(range(len(offered)), key=lambda index: (weights[index], -index))
    if weights[best] == 0:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, f"can answer with {', '.join(offered)}, not {accept}")
    return offered[best]


def _ranges(accept: str | None) -> list[MediaRange]:
    """The ranges of the header in order; empty list elements are ignored (RFC 9110 5.6.1), and a header with none
    (absent or empty) is ``*/*``."""
    ranges = []
    for text in (accept or "").split(","):
        if text.strip():
            media = parse_media_type(text.strip())
            parameters = dict(media.parameters)
            ranges.append(MediaRange(media.type, parameters, _weight(parameters.pop("q", "1"))))
    return ranges or [MediaRange("*/*", {}, 1.0)]


def _weight(text: str) -> float:
    """A q parameter's weight, 0 to 1; one that is not a number (NaN included) counts as 1."""
    try:
        weight = float(text)
    except ValueError:
        return 1.0
    return 1.0 if math.isnan(weight) else min(max(weight, 0.0), 1.0)
