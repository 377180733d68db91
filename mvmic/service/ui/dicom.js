// A reader of the DICOM instances the service answers with: Part 10 files in Explicit VR Little Endian with native
// (uncompressed) Pixel Data, as /v1/decompress and the gateway's WADO-RS give them (PS3.5 7.1.2, 8; PS3.10 7.1).
// Only the attributes a viewer needs are kept: the image pixel module and the window and rescale of PS3.3 C.7.6.3,
// C.11.2, C.11.1. Patient and study attributes are skipped, never read into the page.

export class DicomError extends Error {}

const EXPLICIT_LITTLE = "1.2.840.10008.1.2.1";
const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const UNDEFINED = 0xffffffff;
const PIXEL_DATA = 0x7fe00010;
const WANTED = new Map([
  [0x00020010, "TransferSyntaxUID"], [0x00080060, "Modality"],
  [0x00280002, "SamplesPerPixel"], [0x00280004, "PhotometricInterpretation"], [0x00280006, "PlanarConfiguration"],
  [0x00280008, "NumberOfFrames"], [0x00280010, "Rows"], [0x00280011, "Columns"], [0x00280100, "BitsAllocated"],
  [0x00280101, "BitsStored"], [0x00280103, "PixelRepresentation"], [0x00281050, "WindowCenter"],
  [0x00281051, "WindowWidth"], [0x00281052, "RescaleIntercept"], [0x00281053, "RescaleSlope"],
]);

// Rescale and window of an enhanced multi-frame instance sit in its functional groups (PS3.3 C.7.6.16): the shared
// ones, else the first frame's. They are read from there when the top level lacks them.
const FUNCTIONAL_GROUPS = new Set([0x52009229, 0x52009230]);
const FUNCTIONAL = new Set(["RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"]);

// The image of a Part 10 file (ArrayBuffer): its pixel attributes and its frames as Int32Array of stored values
// (rows x columns x samples, samples interleaved; YBR_FULL_422's shared chroma given to both pixels of a pair),
// sign-extended or masked to BitsStored. DicomError when the file is not such an instance.
export function readDicom(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 132 || String.fromCharCode(...bytes.subarray(128, 132)) !== "DICM") {
    throw new DicomError("not a DICOM Part 10 file (no DICM preamble)");
  }
  const view = new DataView(buffer);
  const attributes = {}, functional = {};
  let pixels = null;
  let offset = 132;
  while (offset + 8 <= bytes.length && view.getUint16(offset, true) === 0x0002) {  // the file meta information
    const element = header(view, offset);
    if (element.tag === 0x00020010) attributes.TransferSyntaxUID = value(view, element);
    offset = element.start + element.length;
  }
  if (attributes.TransferSyntaxUID !== EXPLICIT_LITTLE) {
    throw new DicomError(`transfer syntax ${attributes.TransferSyntaxUID || "(none)"} is not Explicit VR Little Endian`);
  }
  readElements(view, offset, bytes.length, [], (path, element) => {
    const name = WANTED.get(element.tag);
    if (path.length === 0) {
      if (element.tag === PIXEL_DATA) {
        if (element.length === UNDEFINED) throw new DicomError("the Pixel Data is compressed (encapsulated)");
        pixels = bytes.subarray(element.start, element.start + element.length);
      } else if (name) {
        attributes[name] = value(view, element);
      }
    } else if (FUNCTIONAL.has(name) && path.some((tag) => FUNCTIONAL_GROUPS.has(tag)) && !(name in functional)) {
      functional[name] = value(view, element);
    }
  });
  if (pixels === null) throw new DicomError("the instance has no Pixel Data");
  return image({ ...functional, ...attributes }, pixels);
}

function header(view, offset) {
  const tag = ((view.getUint16(offset, true) << 16) | view.getUint16(offset + 2, true)) >>> 0;
  const vr = String.fromCharCode(view.getUint8(offset + 4), view.getUint8(offset + 5));
  const long = LONG_VRS.has(vr);
  if (long && offset + 12 > view.byteLength) throw new DicomError("the file ends inside an attribute");
  const length = long ? view.getUint32(offset + 8, true) : view.getUint16(offset + 6, true);
  const start = offset + (long ? 12 : 8);
  if (length !== UNDEFINED && start + length > view.byteLength) throw new DicomError("the file ends inside an attribute");
  return { tag, vr, length, start };
}

// Calls ``visit(path, element)`` for each element from ``offset`` to ``end`` (``path``: the tags of the sequences
// it is in), going into sequences (PS3.5 7.5); returns the offset after the last one, or after the item
// delimitation item that ends an item of undefined length.
function readElements(view, offset, end, path, visit) {
  while (offset + 8 <= end) {
    if (view.getUint16(offset, true) === 0xfffe) {  // the delimitation item of an item of undefined length
      return offset + 8;
    }
    const element = header(view, offset);
    if (element.vr === "SQ") {
      offset = readItems(view, element, [...path, element.tag], visit);
      continue;
    }
    if (element.vr === "UN" && element.length === UNDEFINED) {  // a sequence of unknown VR, in implicit VR inside
      offset = skipImplicit(view, element.start);
      continue;
    }
    visit(path, element);
    if (element.length === UNDEFINED) {  // encapsulated Pixel Data, where visit did not refuse it
      throw new DicomError("an attribute of undefined length that is no sequence");
    }
    offset = element.start + element.length;
  }
  return offset;
}

function readItems(view, sequence, path, visit) {
  const end = sequence.length === UNDEFINED ? view.byteLength : sequence.start + sequence.length;
  let offset = sequence.start;
  while (offset + 8 <= end) {
    const group = view.getUint16(offset, true), element = view.getUint16(offset + 2, true);
    const length = view.getUint32(offset + 4, true);
    offset += 8;
    if (group === 0xfffe && element === 0xe0dd) return offset;  // the sequence delimitation item
    if (group !== 0xfffe || element !== 0xe000) throw new DicomError("a sequence holds something else than items");
    if (length === UNDEFINED) {
      offset = readElements(view, offset, end, path, visit);
    } else {
      readElements(view, offset, offset + length, path, visit);
      offset += length;
    }
  }
  if (sequence.length === UNDEFINED) throw new DicomError("the file ends inside a sequence");
  return end;
}

// The offset after a sequence of undefined length encoded in implicit VR Little Endian (PS3.5 6.2.2): its items
// and their elements are skipped, nested ones too, up to its sequence delimitation item.
function skipImplicit(view, offset) {
  let depth = 1;
  while (offset + 8 <= view.byteLength) {
    const group = view.getUint16(offset, true), element = view.getUint16(offset + 2, true);
    const length = view.getUint32(offset + 4, true);
    offset += 8;
    if (group === 0xfffe) {
      if (element === 0xe000 && length !== UNDEFINED) offset += length;
      else if (element === 0xe000) depth += 1;  // an item of undefined length: up to its E00D
      else if ((depth -= 1) === 0) return offset;  // E00D closes an item, E0DD the sequence
    } else if (length === UNDEFINED) {
      depth += 1;  // a nested sequence of undefined length: up to its E0DD
    } else {
      offset += length;
    }
  }
  throw new DicomError("the file ends inside a sequence");
}

function value(view, { vr, start, length }) {
  if (vr === "US") return length >= 2 ? view.getUint16(start, true) : undefined;
  const text = new TextDecoder("latin1").decode(new Uint8Array(view.buffer, start, length)).replace(/[\0 ]+$/, "").trim();
  // an empty value is no value (a Type 3 window left empty), not 0
  if (vr === "DS" || vr === "IS") return text.split("\\").map((part) => (part.trim() === "" ? NaN : Number(part)));
  return text;
}

function first(values, fallback) {
  return Array.isArray(values) && values.length && Number.isFinite(values[0]) ? values[0] : fallback;
}

// The header's window (PS3.3 C.11.2), when it is one: a width above 0 and a level.
function headerWindow(a) {
  const width = first(a.WindowWidth, NaN), level = first(a.WindowCenter, NaN);
  return width > 0 && Number.isFinite(level) ? { width, level } : null;
}

function image(a, pixels) {
  const rows = a.Rows, columns = a.Columns, samples = a.SamplesPerPixel || 1;
  const bitsAllocated = a.BitsAllocated, bitsStored = a.BitsStored || bitsAllocated;
  if (!rows || !columns || ![8, 16].includes(bitsAllocated)) {
    throw new DicomError(`not an image the page shows (rows ${rows}, columns ${columns}, bits allocated ${bitsAllocated})`);
  }
  const frames = Math.max(1, first(a.NumberOfFrames, 1));  // 0 read as 1, as pydicom reads it
  const signed = a.PixelRepresentation === 1;
  const perFrame = rows * columns * samples;
  // YBR_FULL_422 stores Y1 Y2 Cb Cr for each pair of pixels (PS3.3 C.7.6.3.1.2): two samples a pixel
  const subsampled = samples === 3 && a.PhotometricInterpretation === "YBR_FULL_422";
  const stored = subsampled ? rows * columns * 2 : perFrame;
  const bytesPerSample = bitsAllocated / 8;
  if (pixels.length < frames * stored * bytesPerSample) throw new DicomError("the Pixel Data is shorter than its frames");
  const raw = bytesPerSample === 2
    ? new Uint16Array(pixels.buffer.slice(pixels.byteOffset, pixels.byteOffset + frames * stored * 2))
    : pixels;
  const planar = samples > 1 && a.PlanarConfiguration === 1 && !subsampled;
  const shift = 32 - bitsStored, mask = bitsStored >= 32 ? -1 : (1 << bitsStored) - 1;
  const out = [];
  for (let f = 0; f < frames; f++) {
    const frame = new Int32Array(perFrame);
    const base = f * stored;
    for (let i = 0; i < perFrame; i++) {
      let source = base + i;
      if (planar) source = base + (i % samples) * rows * columns + Math.floor(i / samples);  // R, G, B planes
      if (subsampled) {  // sample s of pixel p: Y of its own, Cb and Cr of its pair's
        const p = Math.floor(i / 3), s = i % 3, pair = base + 4 * Math.floor(p / 2);
        source = s === 0 ? pair + (p % 2) : pair + 1 + s;
      }
      const v = raw[source];
      frame[i] = signed ? (v << shift) >> shift : v & mask;
    }
    out.push(frame);
  }
  return {
    rows, columns, samples, frames: out, bitsStored, signed,
    modality: a.Modality || "",
    photometric: subsampled ? "YBR_FULL" : a.PhotometricInterpretation || "MONOCHROME2",
    slope: first(a.RescaleSlope, 1) || 1, intercept: first(a.RescaleIntercept, 0),
    window: headerWindow(a),
  };
}
