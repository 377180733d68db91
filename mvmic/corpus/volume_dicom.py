"""Typed constructor: one slice of a CT/MR volume as a DICOM image.

    Volume (voxels in HU or MR units) --slice_image(volume, z)--> NativeImage
        stored value = voxel - RescaleIntercept, unsigned, BitsStored 12

The pyradiomics volumes come as NRRD and TotalSegmentator's as NIfTI; writing them as the CT and MR Image Storage
instances a scanner would send lets every consumer (training, benchmarks, service
tests) read the whole corpus through mvmic.pixels.
"""

from __future__ import annotations

import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mvmic.corpus.sources import Volume
from mvmic.pixels import NativeImage, PixelFormat

SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
# Scanners digitise CT and MR with 12 bits; CT stores HU + 1024. A volume with lower values
# (CT padding below -1024 HU, MR with negative values after resampling) gets a lower intercept.
BITS_STORED = 12
RESCALE_INTERCEPT = {"CT": -1024, "MR": 0}
# Fixed dates keep the corpus byte-identical from one build to the next.
STUDY_DATE = datetime.date(2020, 10, 11)


def slice_image(volume: Volume, index: int) -> NativeImage:
    """Slice ``index`` of ``volume`` with a complete, validated header."""
    if volume.modality not in SOP_CLASSES:
        raise ValueError(f"Modality {volume.modality!r}: only CT and MR volumes are supported")
    pixel_format = PixelFormat(bits_stored=BITS_STORED, signed=False)
    intercept = rescale_intercept(volume)
    stored = volume.voxels[index].astype(np.int32) - intercept
    if stored.min() < pixel_format.min_value or stored.max() > pixel_format.max_value:
        raise ValueError(
            f"{volume.case} slice {index}: values {stored.min()}..{stored.max()} do not fit "
            f"BitsStored {BITS_STORED} with RescaleIntercept {intercept}"
        )
    header = _header(volume, index, intercept)
    pixels = stored.astype(pixel_format.dtype)[None, :, :, None]
    return NativeImage(header=header, pixels=pixels, format=pixel_format)


def rescale_intercept(volume: Volume) -> int:
    """The modality's usual intercept, or the volume's lowest value where that is lower."""
    return min(RESCALE_INTERCEPT[volume.modality], int(volume.voxels.min()))


def _uid(*parts: object) -> str:
    """Deterministic UID, so that rebuilding the corpus gives the same instances."""
    return generate_uid(entropy_srcs=["mvmic-corpus", *map(str, parts)])


def _header(volume: Volume, index: int, intercept: int) -> Dataset:
    modality, patient = volume.modality, f"{volume.dataset}:{volume.case}"
    sop_instance = _uid(patient, "instance", index)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = sop_instance
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = modality
    ds.PatientName = f"{volume.dataset}^{volume.case}"
    ds.PatientID = patient
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = _uid(patient, "study")
    ds.SeriesInstanceUID = _uid(patient, "series")
    ds.FrameOfReferenceUID = _uid(patient, "frame-of-reference")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.StudyID = volume.case
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = f"{volume.dataset} test data (converted by MVMIC)"
    ds.SeriesDescription = f"{volume.dataset} {volume.case}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [*volume.row_direction, *volume.column_direction]
    ds.ImagePositionPatient = _slice_position(volume, index)
    ds.SliceThickness = volume.slice_thickness or volume.spacing[2]
    ds.PixelSpacing = [volume.spacing[0], volume.spacing[1]]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = volume.voxels.shape[1:]
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = 1
    if modality == "CT":
        ds.RescaleType = "HU"
        ds.KVP = ""
    else:
        ds.ScanningSequence = "RM"  # research mode: the sequence is not recorded
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = ds.RepetitionTime = ""
        ds.EchoTrainLength = ""
    ds.AcquisitionNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def _slice_position(volume: Volume, index: int) -> list[float]:
    step = index * volume.spacing[2] * np.asarray(volume.slice_direction)
    return [float(v) for v in np.asarray(volume.origin) + step]
