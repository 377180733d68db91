"""Structure-aware mutators (atheris custom mutators): besides libFuzzer's byte mutations, changes that
keep an input well-formed enough to reach the code behind the first checks.

    .mvm:     bytes mutated, the CRC32 recomputed (else nearly every input stops at the CRC check);
              a header field set to an edge value, alone or with its DICOM header layer (a forged size,
              frame count, bit depth that the decoders then see); a layer's payload mutated (the DICOM
              header layer inflated, mutated as DICOM, deflated again); all written back as a valid container
    DICOM:    a pixel attribute set to an edge value or deleted, another transfer syntax, Pixel Data
              cut or lengthened
    instance: a DICOM mutation, or the .mvm inside it mutated and encapsulated again

Each takes (data, max_size, seed) and returns the mutated bytes; a mutation that cannot be applied falls
back to libFuzzer's own (atheris.Mutate).
"""

from __future__ import annotations

import io
import random
import zlib
from dataclasses import replace

import atheris
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from mvmic.model.bitstream import CRC_BYTES, Bitstream, Layer, LayerKind
from mvmic.transcode import MVM_TRANSFER_SYNTAX, bitstream_of_instance

EDGE_INTEGERS = (0, 1, 2, 3, 4, 7, 8, 9, 12, 15, 16, 17, 31, 32, 33, 64, 255, 256, 4096, 32767, 32768, 65535,
                 65536, 1 << 20, (1 << 31) - 1, -1)
PIXEL_ATTRIBUTES = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "NumberOfFrames", "PlanarConfiguration")
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "YBR_RCT",
                "YBR_ICT", "HSV", "ARGB", "CMYK", "", "XYZ")
FRAME_COUNTS = ("0", "-1", "", "2.5", "1e3", "abc")
TRANSFER_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                     DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless,
                     JPEG2000Lossless, RLELossless, MVM_TRANSFER_SYNTAX, "1.2.3.4")
DESCRIBED = (("rows", "Rows"), ("columns", "Columns"), ("frames", "NumberOfFrames"), ("bits_stored", "BitsStored"),
             ("signed", "PixelRepresentation"), ("photometric", "PhotometricInterpretation"),
             ("samples_per_pixel", "SamplesPerPixel"))
SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65, 255, 256, 257, 1024, 4096, 8192)
STREAM_FIELDS = ("rows", "columns", "frames", "samples_per_pixel", "bits_stored", "signed", "photometric", "offset",
                 "scale_log2", "quality_code")
MAX_HEADER_BYTES = 1 << 16  # a seed's header layer inflates to a few hundred bytes


def with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(CRC_BYTES, "little")


def mutate_mvm(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    action = rng.randrange(9)
    if action == 0:  # the CRC too: the container's own checks
        return atheris.Mutate(data, max_size)
    try:
        stream = Bitstream.from_bytes(data)
    except ValueError:
        stream = None
    if stream is None or action <= 3:  # the fields and lengths behind a valid CRC
        return with_crc(atheris.Mutate(data[:-CRC_BYTES], max(max_size - CRC_BYTES, 1)))
    try:
        if action == 4:
            mutated = _mutate_field(stream, rng)
        elif action == 5:
            mutated = _mutate_described(stream, rng)
        else:
            mutated = _mutate_layers(stream, max_size, rng)
        out = mutated.to_bytes()
    except Exception:  # noqa: BLE001 - a field value the container refuses, a header layer that does not inflate
        return with_crc(atheris.Mutate(data[:-CRC_BYTES], max(max_size - CRC_BYTES, 1)))
    return out if len(out) <= max_size else with_crc(atheris.Mutate(data[:-CRC_BYTES], max(max_size - CRC_BYTES, 1)))


def _mutate_field(stream: Bitstream, rng: random.Random) -> Bitstream:
    field = rng.choice(STREAM_FIELDS)
    if field == "signed":
        return replace(stream, signed=not stream.signed)
    if field == "photometric":
        return replace(stream, photometric=rng.choice(PHOTOMETRICS[:6]))
    value = getattr(stream, field)
    return replace(stream, **{field: rng.choice((value + 1, value - 1, value * 2, value // 2, -value,
                                                 *EDGE_INTEGERS))})


def _mutate_described(stream: Bitstream, rng: random.Random) -> Bitstream:
    """One field of the geometry or pixel format set alike in the stream and in its DICOM header layer: past the
    check that they agree, to the decoders of the layers (forged sizes, frames, bit depths)."""
    field, keyword = rng.choice(DESCRIBED)
    value = getattr(stream, field)
    if field == "signed":
        value = not value
    elif field == "photometric":
        value = rng.choice(PHOTOMETRICS[:6])
    else:
        value = max(1, rng.choice((value + 1, value - 1, value * 2, value // 2, *SIZES)))
    layers = list(stream.layers)
    for index, layer in enumerate(layers):
        if layer.kind == LayerKind.DICOM_HEADER:
            header = pydicom.dcmread(io.BytesIO(zlib.decompressobj().decompress(layer.payload, MAX_HEADER_BYTES)))
            setattr(header, keyword, int(value) if field == "signed" else value)
            if field == "bits_stored":
                header.BitsAllocated, header.HighBit = 8 if value <= 8 else 16, value - 1
            layers[index] = Layer(layer.kind, layer.frame, zlib.compress(_part10(header), 9))
    if field == "frames":  # the new frames get the last frame's layers, the removed ones lose theirs
        coded = [layer for layer in layers if layer.kind != LayerKind.DICOM_HEADER and layer.frame == stream.frames - 1]
        layers = [layer for layer in layers if layer.kind == LayerKind.DICOM_HEADER or layer.frame < value]
        layers += [Layer(layer.kind, frame, layer.payload) for frame in range(stream.frames, value) for layer in coded]
    return replace(stream, layers=tuple(layers), **{field: value})


def _mutate_layers(stream: Bitstream, max_size: int, rng: random.Random) -> Bitstream:
    layers = list(stream.layers)
    if not layers:
        return stream
    index = rng.randrange(len(layers))
    layer = layers[index]
    action = rng.randrange(6)
    if action == 0:  # one layer fewer
        del layers[index]
    elif action == 1:  # another frame, or another kind
        frame = rng.choice((layer.frame + 1, max(layer.frame - 1, 0), stream.frames, 0))
        layers[index] = Layer(rng.choice(list(LayerKind)) if rng.random() < 0.5 else layer.kind, frame, layer.payload)
    elif layer.kind == LayerKind.DICOM_HEADER and action <= 3:
        inflater = zlib.decompressobj()
        header = inflater.decompress(layer.payload, MAX_HEADER_BYTES)
        mutated = mutate_dicom(header, max(len(header) * 2, 256), rng.randrange(1 << 32))
        layers[index] = Layer(layer.kind, layer.frame, zlib.compress(mutated, rng.choice((0, 9))))
    else:
        room = max(max_size - len(stream.to_bytes()) + len(layer.payload), 1)
        layers[index] = Layer(layer.kind, layer.frame, atheris.Mutate(layer.payload, room))
    return replace(stream, layers=tuple(layers))


def mutate_dicom(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.4:
        return atheris.Mutate(data, max_size)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        _mutate_dataset(dataset, rng)
        out = _part10(dataset)
    except Exception:  # noqa: BLE001 - pydicom refuses many mutated datasets, in many ways: mutate the bytes
        return atheris.Mutate(data, max_size)
    return out if len(out) <= max_size else atheris.Mutate(data, max_size)


def _mutate_dataset(dataset: pydicom.Dataset, rng: random.Random) -> None:
    action = rng.randrange(6)
    if action == 0:
        keyword = rng.choice(PIXEL_ATTRIBUTES)
        if keyword == "NumberOfFrames" and rng.random() < 0.3:
            dataset.NumberOfFrames = rng.choice(FRAME_COUNTS)
        else:
            current = dataset.get(keyword)
            base = int(current) if isinstance(current, int) else 1
            setattr(dataset, keyword, rng.choice((base + 1, base - 1, base * 2, base // 2, *EDGE_INTEGERS)))
    elif action == 1:
        dataset.PhotometricInterpretation = rng.choice(PHOTOMETRICS)
    elif action == 2:
        keyword = rng.choice((*PIXEL_ATTRIBUTES, "PhotometricInterpretation", "PixelData"))
        if keyword in dataset:
            delattr(dataset, keyword)
    elif action == 3:
        dataset.file_meta.TransferSyntaxUID = rng.choice(TRANSFER_SYNTAXES)
    elif "PixelData" in dataset:
        pixels = dataset.PixelData
        cut = rng.randrange(len(pixels) + 1)
        dataset.PixelData = pixels[:cut] if action == 4 else pixels + bytes(rng.randrange(256) for _ in range(cut % 64 + 1))


def mutate_instance(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return mutate_dicom(data, max_size, rng.randrange(1 << 32))
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        inner = bitstream_of_instance(dataset)
        mutated = mutate_mvm(inner, max(max_size - len(data) + len(inner), 16), rng.randrange(1 << 32))
        dataset.PixelData = encapsulate([mutated + b"\x00" * (len(mutated) % 2)], has_bot=False)
        dataset["PixelData"].VR = "OB"
        dataset["PixelData"].is_undefined_length = True
        out = _part10(dataset)
    except Exception:  # noqa: BLE001 - not an instance holding fragments any more: mutate the bytes
        return atheris.Mutate(data, max_size)
    return out if len(out) <= max_size else atheris.Mutate(data, max_size)


def _part10(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()
