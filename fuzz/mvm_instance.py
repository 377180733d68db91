"""Fuzz target mvm_instance: a DICOM instance holding an encapsulated .mvm (what the gateway stores in the
PACS) decoded, as /v1/decompress does with a DICOM body and the gateway's WADO-RS with an MVMIC instance
(mvmic.pixels.read_dataset, then mvmic.transcode.instance_to_dicom with the served codec), and the decoded
instance as the service writes it (common.check_decoded).

    python fuzz/mvm_instance.py -runs=1000       (see fuzz/common.py for the flags and folders)
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
    from mvmic.pixels import read_dataset
    from mvmic.transcode import bitstream_of_instance, instance_to_dicom

CODEC = MvmicCodec.load()  # the served weights, as mvmic.service.resident_models.load_models loads them


def TestOneInput(data: bytes) -> None:
    with common.refusing_bad_input():
        instance = read_dataset(data)
        dataset = instance_to_dicom(instance, CODEC)
        common.check_decoded(dataset, Bitstream.from_bytes(bitstream_of_instance(instance)))


if __name__ == "__main__":
    common.run("mvm_instance", TestOneInput, lambda: seeds.instance_seeds(seeds.corpus_images(), CODEC),
               mutators.mutate_instance)
