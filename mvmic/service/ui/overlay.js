// What the task heads found (the ``analysis`` of /v1/compress, an AnalysisReport), drawn over a view: the lesion
// mask, one mask per organ, and the boxes with their labels and scores.

const LESION = [255, 40, 90];
const ORGAN_COLOURS = [[255, 160, 60], [80, 200, 120], [70, 140, 255], [230, 210, 60], [190, 90, 230],
  [60, 220, 220], [240, 120, 180]];

// The run lengths of a COCO compressed RLE string (pycocotools' rleFrString): 6-bit characters from '0', 5 bits of
// value each, 0x20 continues, 0x10 in the last is the sign; from the third run on, each is a difference to the
// run two before.
export function runLengths(counts) {
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = counts.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1; k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  return runs;
}

// A mask ({size: [rows, columns], counts}) as a canvas of its pixels in ``colour`` (alpha ``alpha``), transparent
// elsewhere; COCO's runs go down the columns, starting with a run of zeros.
export function maskCanvas(mask, colour, alpha = 110) {
  const [rows, columns] = mask.size;
  const canvas = document.createElement("canvas");
  canvas.width = columns; canvas.height = rows;
  const context = canvas.getContext("2d");
  const data = context.createImageData(columns, rows);
  let index = 0, pixels = 0;
  runLengths(mask.counts).forEach((run, i) => {
    if (i % 2 === 1) {
      for (let n = index; n < index + run; n++) {
        const j = 4 * ((n % rows) * columns + Math.floor(n / rows));
        data.data.set([...colour, alpha], j);
      }
      pixels += run;
    }
    index += run;
  });
  context.putImageData(data, 0, 0);
  canvas.pixels = pixels;
  return canvas;
}

// The overlay of one frame's findings: a function (context, scale) for View.show, and the legend's entries.
export function findingsOverlay(findings, organClasses, show) {
  const colourOf = (label) => label === "lesion" ? LESION
    : ORGAN_COLOURS[Math.max(0, organClasses.indexOf(label)) % ORGAN_COLOURS.length];
  const layers = [];
  const legend = [];
  if (show.lesions) layers.push(maskCanvas(findings.segmentation, LESION));
  legend.push({ label: `lesion mask: ${findings.segmented_pixels} pixels`, colour: LESION });
  for (const organ of findings.organs) {
    const colour = colourOf(organ.label);
    if (show.organs) layers.push(maskCanvas(organ.segmentation, colour));
    legend.push({ label: `${organ.label}: ${organ.pixels} pixels`, colour });
  }
  const draw = (context, scale) => {
    context.imageSmoothingEnabled = false;
    for (const layer of layers) context.drawImage(layer, 0, 0);
    if (!show.boxes) return;
    context.lineWidth = 1.5 / scale;
    context.font = `${11 / scale}px sans-serif`;
    for (const { box, score, label } of findings.boxes) {
      const [x0, y0, x1, y1] = box;
      const colour = `rgb(${colourOf(label).join(",")})`;
      context.strokeStyle = colour; context.fillStyle = colour;
      context.strokeRect(x0, y0, x1 - x0, y1 - y0);
      context.fillText(`${label} ${score.toFixed(2)}`, x0, y0 - 3 / scale);
    }
  };
  return { draw, legend };
}
