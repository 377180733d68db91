"""Fuzz target dicom_input: received DICOM bytes, as /v1/compress and the gateway's STOW-RS take them.

    /v1/compress (lossless):  mvmic.transcode.dicom_to_mvm (read_dataset, read_dicom, the exact stream);
                              an accepted instance must decode to its own Pixel Data, byte for byte
    gateway:                  mvmic.pacs.storage.prepare_instance (lossless storage policy): never an
                              exception, never an error logged as unexpected; then the stored instance
                              given back as Explicit VR Little Endian (storage.render, WADO-RS), the
                              received Pixel Data byte for byte when the gateway compressed it

    python fuzz/dicom_input.py -runs=1000        (see fuzz/common.py for the flags and folders)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import torch  # before the instrumented imports: never instrumented

common.quiet()
torch.set_num_threads(1)
with common.instrumented():
    import io

    import mutators
    import pydicom
    import seeds
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from mvmic.model.codec import MvmicCodec
    from mvmic.pacs.storage import NotAcceptableError, StoragePolicy, prepare_instance, render
    from mvmic.transcode import dicom_to_mvm, mvm_to_dicom

CODEC = MvmicCodec.load()  # the served weights, as mvmic.service.resident_models.load_models loads them
LOSSLESS = StoragePolicy(max_error=0)
NATIVE_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
LOGGED = common.LoggedErrors()


def TestOneInput(data: bytes) -> None:
    compressed = None
    with common.refusing_bad_input():
        compressed = dicom_to_mvm(data, CODEC, max_error=0)
    if compressed is not None:  # what the service coded, it decodes: no refusal now
        _expect_same_pixels(data, mvm_to_dicom(compressed.data, None), "/v1/compress lossless")
    prepared = prepare_instance(data, CODEC, None, LOSSLESS)
    LOGGED.check()
    if prepared.failure is not None:
        return
    common.expect(len(prepared.instances) == 1, f"{len(prepared.instances)} instances stored: {prepared.note}")
    with common.refusing_bad_input(also=(NotAcceptableError,)):
        given, _ = render(prepared.instances[0], [ExplicitVRLittleEndian], CODEC)
        if prepared.note.startswith("compressed"):
            _expect_same_pixels(data, pydicom.dcmread(io.BytesIO(given)), "the gateway's stored instance")


def _expect_same_pixels(received: bytes, decoded: pydicom.Dataset, what: str) -> None:
    """Native little-endian Pixel Data comes back byte for byte (to even length, as DICOM pads it)."""
    original = pydicom.dcmread(io.BytesIO(received))
    if original.file_meta.TransferSyntaxUID not in NATIVE_LITTLE_ENDIAN:
        return
    pixels = original.PixelData + b"\x00" * (len(original.PixelData) % 2)
    common.expect(decoded.PixelData == pixels, f"{what}: {len(decoded.PixelData)} bytes of Pixel Data decoded, "
                  f"not the {len(pixels)} received")


if __name__ == "__main__":
    common.run("dicom_input", TestOneInput, lambda: seeds.dicom_seeds(seeds.corpus_images()), mutators.mutate_dicom)
