"""The fixed train/validation/test split, by patient or volume, never by slice.

A group is a PatientID (or, where the file has none, its StudyInstanceUID) for the
pydicom files, and the case name for the pyradiomics and TotalSegmentator studies. The table lists the
held-out groups; every other group trains. Each modality with more than one group
has a test group, so the benchmarks cover CT, MR, CR, NM and US.
"""

from __future__ import annotations

HELD_OUT: dict[str, str] = {
    # pyradiomics volumes, each with an expert lesion mask
    "pyradiomics:lung1": "test",  # CT
    "pyradiomics:brain2": "test",  # MR
    "pyradiomics:breast1": "val",  # MR
    # TotalSegmentator studies, each with organ maps (that model's output): the 3 mm CT volume
    # tests; the MR volume and the CT series (1 mm, 512 x 512) train
    "totalsegmentator:ct": "test",
    # a CT angiogram (233 x 167 slices of 1.5 mm pixels, no organ map): synthetic lesions on real CT
    # frames of their test frames' kind, to validate on
    "totalsegmentator:ct-angio": "val",
    # pydicom / pydicom-data patients
    "CQ500-CT-310": "test",  # CT head
    "JXD191021006": "val",  # CT
    "5MR2": "test",  # MR 1024 x 1024
    "1.2.826.0.1.3680043.2.1143.3365540476747857567072393009509418480": "val",  # MR multi-frame
    "11RG3": "test",  # CR 1760 x 1760
    # Full-size frames of three more patients, so that validation looks like the test frames
    # (the other validation groups are 64 x 64 and 120 x 45 images)
    "PANCREAS_0001": "val",  # CT 512 x 512
    "b2cbe507f250": "val",  # CT 512 x 512
    "021234567": "val",  # MR 484 x 484 and 300 x 484
    "8NM1": "test",  # NM whole body, the only NM patient
    "13US1": "test",  # US RGB
}


def split_of(group: str) -> str:
    return HELD_OUT.get(group, "train")
