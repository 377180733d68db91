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

// The image of a Part 10 file (ArrayBuffer): its pixel attributes and its frames as Int32Array of stored values
// (rows x columns x samples, samples interleaved), sign-extended or masked to BitsStored. DicomError when the file
// is not such an instance.
export function readDicom(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 132 || String.fromCharCode(...bytes.subarray(128, 132)) !== "DICM") {
    throw new DicomError("not a DICOM Part 10 file (no DICM preamble)");
  }
  const view = new DataView(buffer);
  const attributes = {};
  let pixels = null;
  let offset = 132;
  while (offset + 8 <= bytes.length) {
    const tag = ((view.getUint16(offset, true) << 16) | view.getUint16(offset + 2, true)) >>> 0;
    const vr = String.fromCharCode(bytes[offset + 4], bytes[offset + 5]);
    let length, start;
    if (LONG_VRS.has(vr)) {
      length = view.getUint32(offset + 8, true);
      start = offset + 12;
    } else {
      length = view.getUint16(offset + 6, true);
      start = offset + 8;
    }
    if (tag >>> 16 !== 0x0002 && attributes.TransferSyntaxUID !== EXPLICIT_LITTLE) {
      throw new DicomError(`transfer syntax ${attributes.TransferSyntaxUID || "(none)"} is not Explicit VR Little Endian`);
    }
    if (tag === PIXEL_DATA) {
      if (length === UNDEFINED) throw new DicomError("the Pixel Data is compressed (encapsulated)");
      pixels = bytes.subarray(start, Math.min(start + length, bytes.length));
      break;
    }
    if (length === UNDEFINED) {
      offset = skipUndefined(view, start);
      continue;
    }
    if (start + length > bytes.length) throw new DicomError("the file ends inside an attribute");
    const name = WANTED.get(tag);
    if (name) attributes[name] = value(view, vr, start, length);
    offset = start + length;
  }
  if (pixels === null) throw new DicomError("the instance has no Pixel Data");
  return image(attributes, pixels);
}

function value(view, vr, start, length) {
  if (vr === "US") return view.getUint16(start, true);
  const text = new TextDecoder("latin1").decode(new Uint8Array(view.buffer, start, length)).replace(/[\0 ]+$/, "").trim();
  if (vr === "DS" || vr === "IS") return text.split("\\").map(Number);
  return text;
}

// The offset after a sequence or item of undefined length that starts at ``offset`` (PS3.5 7.5): items and
// elements inside are skipped, nested ones too, until the delimiter that closes this one.
function skipUndefined(view, offset) {
  const end = view.byteLength;
  let depth = 1;
  while (offset + 8 <= end) {
    const group = view.getUint16(offset, true);
    const element = view.getUint16(offset + 2, true);
    if (group === 0xfffe) {
      const length = view.getUint32(offset + 4, true);
      offset += 8;
      if (element === 0xe000) {
        if (length === UNDEFINED) depth += 1;
        else offset += length;
      } else {  // E00D item or E0DD sequence delimiter
        depth -= 1;
        if (depth === 0) return offset;
      }
      continue;
    }
    const vr = String.fromCharCode(view.getUint8(offset + 4), view.getUint8(offset + 5));
    const long = LONG_VRS.has(vr);
    const length = long ? view.getUint32(offset + 8, true) : view.getUint16(offset + 6, true);
    offset += long ? 12 : 8;
    if (length === UNDEFINED) depth += 1;
    else offset += length;
  }
  throw new DicomError("the file ends inside a sequence");
}

function first(values, fallback) {
  return Array.isArray(values) && values.length && Number.isFinite(values[0]) ? values[0] : fallback;
}

function image(a, pixels) {
  const rows = a.Rows, columns = a.Columns, samples = a.SamplesPerPixel || 1;
  const bitsAllocated = a.BitsAllocated, bitsStored = a.BitsStored || bitsAllocated;
  if (!rows || !columns || ![8, 16].includes(bitsAllocated)) {
    throw new DicomError(`not an image the page shows (rows ${rows}, columns ${columns}, bits allocated ${bitsAllocated})`);
  }
  const frames = first(a.NumberOfFrames, 1);
  const signed = a.PixelRepresentation === 1;
  const perFrame = rows * columns * samples;
  const bytesPerSample = bitsAllocated / 8;
  if (pixels.length < frames * perFrame * bytesPerSample) throw new DicomError("the Pixel Data is shorter than its frames");
  const raw = bytesPerSample === 2
    ? new Uint16Array(pixels.buffer.slice(pixels.byteOffset, pixels.byteOffset + frames * perFrame * 2))
    : pixels;
  const planar = samples > 1 && a.PlanarConfiguration === 1;
  const shift = 32 - bitsStored, mask = bitsStored >= 32 ? -1 : (1 << bitsStored) - 1;
  const out = [];
  for (let f = 0; f < frames; f++) {
    const frame = new Int32Array(perFrame);
    const base = f * perFrame;
    for (let i = 0; i < perFrame; i++) {
      // planar (R plane, G plane, B plane) to interleaved
      const source = planar ? base + (i % samples) * rows * columns + Math.floor(i / samples) : base + i;
      const v = raw[source];
      frame[i] = signed ? (v << shift) >> shift : v & mask;
    }
    out.push(frame);
  }
  return {
    rows, columns, samples, frames: out, bitsStored, signed,
    modality: a.Modality || "",
    photometric: a.PhotometricInterpretation || "MONOCHROME2",
    slope: first(a.RescaleSlope, 1), intercept: first(a.RescaleIntercept, 0),
    window: a.WindowWidth && a.WindowCenter ? { width: first(a.WindowWidth, 0), level: first(a.WindowCenter, 0) } : null,
  };
}
