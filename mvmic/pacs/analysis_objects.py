"""The analysis of an image as standard DICOM objects a PACS stores beside it (built with highdicom).

    source instance (as stored) + FrameAnalysis per frame
        --segmentation--> DICOM Segmentation (binary; segment 1 "lesion", then one per organ class of
                          mvmic.model.tasks.organs, SNOMED CT coded; every segment has a frame per source frame)
        --measurement_report--> Comprehensive SR, TID 1500 Measurement Report: one planar ROI group per
                                box (a closed polyline on its source frame, finding type the box's class,
                                tracking id with the label and score)

Both name the source in their references (SEG: ReferencedSeriesSequence / SourceImageSequence; SR:
evidence and each region's source image), share its study, and sit in new series of their own, whose
UIDs (and their own) derive from the source's and the model's: storing an image again replaces its
analysis, never adds a second one. Both pass
dciodvfy (tests/test_conformance.py): the source's missing Type 2 patient and study attributes are copied
empty (unknown), a SEG without plane orientation carries Patient Orientation, and a SEG in a frame of
reference has a slice thickness (or no SEG is made, ValueError).
"""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
from highdicom.spatial import get_image_coordinate_system
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mvmic.model.tasks.analysis import FrameAnalysis
from mvmic.model.tasks.organs import ORGAN_CLASSES

MANUFACTURER = "MVMIC"
ALGORITHM = "MVMICNet"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER = 9901, 9902
# Type 2 attributes of the Patient and General Study modules that the objects copy from their source: empty
# (unknown) where the source lacks them (highdicom reads them unconditionally).
SHARED_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")
REQUIRED = ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID")  # Type 1: without them nothing can reference it
# Segmented property (category, type) of each class, in the order of mvmic.model.tasks.heads.DETECTION_CLASSES.
PROPERTIES = {
    "lesion": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion),
    "liver": (codes.SCT.AnatomicalStructure, codes.SCT.Liver),
    "spleen": (codes.SCT.AnatomicalStructure, codes.SCT.Spleen),
    "kidney": (codes.SCT.AnatomicalStructure, codes.SCT.Kidney),
    "stomach": (codes.SCT.AnatomicalStructure, codes.SCT.Stomach),
    "vertebra": (codes.SCT.AnatomicalStructure, codes.SCT.Vertebra),
    "back muscle": (codes.SCT.AnatomicalStructure, codes.SCT.ErectorSpinaeMuscle),
    "aorta": (codes.SCT.AnatomicalStructure, codes.SCT.Aorta),
}


def _uid(source: Dataset, role: str, model_id: str) -> hd.UID:
    """The UID of one of an analysis's objects (or of something inside one), the same for the same source
    instance, role and model: the analysis of an image stored again replaces its SEG and SR in the PACS
    instead of adding a copy (pydicom's root and a hash, PS3.5 B.2)."""
    return hd.UID(generate_uid(entropy_srcs=[str(source.get("SOPInstanceUID", "")), role, model_id]))


def _algorithm(model_id: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=ALGORITHM, version=model_id,
                                              family=codes.DCM.ArtificialIntelligence)


def as_reference(source: Dataset) -> Dataset:
    """The source's header as the objects reference it: highdicom reads attributes, never pixels, and
    a stored MVMIC instance's private transfer syntax means nothing to it. Raises ValueError for a source
    without the UIDs that the objects must reference."""
    missing = [keyword for keyword in REQUIRED if not source.get(keyword)]
    if missing:
        raise ValueError(f"the source has no {', '.join(missing)}, which the analysis objects must reference")
    # its own elements dict (copy.copy and Dataset(source) share the source's), adding and removing elements only;
    # the file meta, whose element it alters, copied whole (a few elements)
    header = Dataset(dict(source))
    header.file_meta = copy.deepcopy(source.get("file_meta", FileMetaDataset()))
    header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in SHARED_TYPE_2:
        if keyword not in header:
            setattr(header, keyword, None)  # present, empty: unknown
    return header


def segmentation(source: Dataset, frames: list[FrameAnalysis], model_id: str) -> Dataset:
    """The lesion mask and the organ maps of every frame; segment 1 is the lesion, segment 1 + c
    the organ class c (ORGAN_CLASSES[c - 1]). Raises ValueError for a source it cannot conform to
    (_seg_reference), as highdicom does for one it refuses."""
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=label, segmented_property_category=PROPERTIES[label][0],
        segmented_property_type=PROPERTIES[label][1], algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(model_id)) for number, label in enumerate(PROPERTIES, start=1)]
    masks = np.stack([np.stack([frame.mask, *(frame.organs == c for c in range(1, len(ORGAN_CLASSES) + 1))], axis=-1)
                      for frame in frames]).astype(np.uint8)  # (frames, rows, columns, segments)
    seg = hd.seg.Segmentation(
        source_images=[_seg_reference(source)], pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=_uid(source, "SEG series", model_id), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=_uid(source, "SEG", model_id), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=ALGORITHM, software_versions=model_id,
        device_serial_number="none", series_description=f"{ALGORITHM} lesion and organ segmentation",
        omit_empty_frames=False)
    planes = [*seg.get("SharedFunctionalGroupsSequence", []), *seg.get("PerFrameFunctionalGroupsSequence", [])[:1]]
    if not any("PlaneOrientationSequence" in group for group in planes) and "PatientOrientation" not in seg:
        # General Image Module, Type 2C: required when the image has no Image Orientation (Patient); the
        # masks lie on the source's pixel grid, so they share its orientation (empty: unknown)
        seg.PatientOrientation = source.get("PatientOrientation") or None
    return seg


def _seg_reference(source: Dataset) -> Dataset:
    """as_reference, for a Segmentation: a SEG in a frame of reference needs a Slice Thickness (PS3.3
    C.7.6.16.2.1, Pixel Measures). A source with a frame of reference but no position (a secondary capture,
    say) gets a SEG without one, on its pixel grid; a source with a position but no slice thickness gets
    none (ValueError)."""
    reference = as_reference(source)
    if "FrameOfReferenceUID" not in reference or _slice_thickness(reference):
        return reference
    if get_image_coordinate_system(reference) is None:  # highdicom would keep the frame, with no geometry in it
        del reference.FrameOfReferenceUID
        return reference
    raise ValueError("the source has a frame of reference but no Slice Thickness, which a Segmentation in that "
                     "frame of reference needs")


def _slice_thickness(dataset: Dataset) -> float | None:
    """The Slice Thickness where highdicom reads it: the shared Pixel Measures of a multi-frame image with
    functional groups, else the top level; None if absent or empty."""
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared and "PixelMeasuresSequence" in shared[0]:
        value = shared[0].PixelMeasuresSequence[0].get("SliceThickness")
    else:
        value = dataset.get("SliceThickness")
    return float(value) if value not in (None, "") else None


def measurement_report(source: Dataset, frames: list[FrameAnalysis], model_id: str) -> Dataset:
    reference = as_reference(source)
    multiframe = int(getattr(source, "NumberOfFrames", 1) or 1) > 1
    groups = []
    for frame in frames:
        for number, (box, score, label) in enumerate(zip(frame.boxes, frame.scores, frame.labels, strict=True),
                                                     start=len(groups) + 1):
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=_closed_rectangle(box),
                source_image=hd.sr.SourceImageForRegion(
                    referenced_sop_class_uid=source.SOPClassUID, referenced_sop_instance_uid=source.SOPInstanceUID,
                    referenced_frame_numbers=[frame.frame + 1] if multiframe else None))
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(source, f"region {number}", model_id),
                                                             identifier=f"{label} {number} (score {score:.3f})"),
                referenced_region=region, finding_type=PROPERTIES[label][1], algorithm_id=hd.sr.AlgorithmIdentification(
                    name=ALGORITHM, version=model_id)))
    if not groups:  # TID 1500 needs a measurement group: an image-level one saying nothing was found
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(source, "no finding", model_id),
                                                         identifier="no lesion or organ found"),
            finding_type=codes.SCT.Lesion, algorithm_id=hd.sr.AlgorithmIdentification(name=ALGORITHM, version=model_id),
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Lesion, codes.SCT.Absent)],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(reference)]))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid(source, "device", model_id), name=ALGORITHM, manufacturer_name=MANUFACTURER, model_name=model_id))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    return hd.sr.ComprehensiveSR(
        evidence=[reference], content=report, series_instance_uid=_uid(source, "SR series", model_id),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=_uid(source, "SR", model_id), instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"{ALGORITHM} lesion and organ boxes")


def _closed_rectangle(box: np.ndarray) -> np.ndarray:
    """x0 y0 x1 y1 (pixels) as the closed polyline SCOORD wants: (column, row) points, first = last."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
