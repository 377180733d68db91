"""Fuzz target mvm_decoder: a .mvm bitstream decoded to DICOM, as /v1/decompress and `mvmic decompress` do
(mvmic.transcode.mvm_to_dicom with the served codec): the container (mvmic.model.bitstream), every layer kind
(lossy base of both models, residual, exact near-lossless and lossless, the DICOM header layer) and the
decoded instance as the service writes it (common.check_decoded).

    python fuzz/mvm_decoder.py -runs=1000        (see fuzz/common.py for the flags and folders)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import torch  # before the instrumented imports: never instrumented

common.quiet()
torch.set_num_threads(1)
with common.instrumented():
    import mutators
    import seeds

    from mvmic.model.bitstream import Bitstream
    from mvmic.model.codec import MvmicCodec
    from mvmic.transcode import mvm_to_dicom

CODEC = MvmicCodec.load()  # the served weights, as mvmic.service.resident_models.load_models loads them


def TestOneInput(data: bytes) -> None:
    with common.refusing_bad_input():
        dataset = mvm_to_dicom(data, CODEC)
        common.check_decoded(dataset, Bitstream.from_bytes(data))


if __name__ == "__main__":
    common.run("mvm_decoder", TestOneInput, lambda: seeds.mvm_seeds(seeds.corpus_images(), CODEC), mutators.mutate_mvm)
