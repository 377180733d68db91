// The three views of the compare tab: original, decoded and their difference, drawn on canvases that share one
// view (zoom and pan) and one window, so that they always show the same pixels the same way.
//
//   frame (Int32Array of stored values) --render/renderDifference--> an offscreen canvas, one pixel per pixel
//   --View.draw: the shared zoom and pan, then the overlay (masks, boxes) in image coordinates--> the visible canvas

// Window presets in Hounsfield units (width, level), as radiology viewers ship them.
export const PRESETS = { lung: { width: 1500, level: -600 }, soft: { width: 400, level: 40 }, bone: { width: 1800, level: 400 } };

// The window a viewer opens an image with: CT at the header's window, else soft tissue; other modalities
// (MR, CR, US, ...) from the 1st to the 99th percentile of their values in modality units.
export function autoWindow(image, frame) {
  if (image.modality === "CT") return image.window || PRESETS.soft;
  const step = Math.max(1, Math.floor(frame.length / 65536));
  const values = [];
  for (let i = 0; i < frame.length; i += step) values.push(frame[i] * image.slope + image.intercept);
  values.sort((a, b) => a - b);
  const low = values[Math.floor(0.01 * (values.length - 1))], high = values[Math.ceil(0.99 * (values.length - 1))];
  return { width: Math.max(high - low, 1), level: (high + low) / 2 };
}

function canvasOf(rows, columns) {
  const canvas = document.createElement("canvas");
  canvas.width = columns;
  canvas.height = rows;
  return canvas;
}

// One frame as a canvas of display values: grey through the window (in modality units, PS3.3 C.11.2), MONOCHROME1
// inverted; colour (3 samples) scaled from its stored range, YBR_FULL converted to RGB.
export function render(image, frame, window) {
  const { rows, columns, samples } = image;
  const canvas = canvasOf(rows, columns);
  const context = canvas.getContext("2d");
  const data = context.createImageData(columns, rows);
  const out = data.data;
  if (samples === 3) {
    const scale = 255 / ((1 << image.bitsStored) - 1);
    const ybr = image.photometric.startsWith("YBR_FULL");
    for (let i = 0, j = 0; i < frame.length; i += 3, j += 4) {
      let r = frame[i] * scale, g = frame[i + 1] * scale, b = frame[i + 2] * scale;
      if (ybr) [r, g, b] = [r + 1.402 * (b - 128), r - 0.344136 * (g - 128) - 0.714136 * (b - 128), r + 1.772 * (g - 128)];
      out[j] = r; out[j + 1] = g; out[j + 2] = b; out[j + 3] = 255;
    }
  } else {
    const low = window.level - window.width / 2, gain = 255 / window.width;
    const invert = image.photometric === "MONOCHROME1";
    for (let i = 0, j = 0; i < frame.length; i++, j += 4) {
      let v = ((frame[i] * image.slope + image.intercept) - low) * gain;
      v = v < 0 ? 0 : v > 255 ? 255 : v;
      if (invert) v = 255 - v;
      out[j] = out[j + 1] = out[j + 2] = v;
      out[j + 3] = 255;
    }
  }
  context.putImageData(data, 0, 0);
  return canvas;
}

// decoded − original in stored units: black where equal, red where the decoder gave more, blue where less, full
// brightness at ``scale`` (the largest error of the frame; colour: the sample that errs most), brightness the square
// root of |error| / scale, so that errors of a few units stay visible beside the largest.
export function renderDifference(image, original, decoded, scale) {
  const { rows, columns, samples } = image;
  const canvas = canvasOf(rows, columns);
  const context = canvas.getContext("2d");
  const data = context.createImageData(columns, rows);
  const out = data.data;
  const gain = scale > 0 ? 1 / scale : 0;
  for (let p = 0, j = 0; p < rows * columns; p++, j += 4) {
    let error = 0;
    for (let s = 0; s < samples; s++) {
      const e = decoded[p * samples + s] - original[p * samples + s];
      if (Math.abs(e) > Math.abs(error)) error = e;
    }
    const v = 255 * Math.sqrt(Math.min(1, Math.abs(error) * gain));
    out[j] = error > 0 ? v : 0;
    out[j + 1] = v / 4;
    out[j + 2] = error < 0 ? v : 0;
    out[j + 3] = 255;
  }
  context.putImageData(data, 0, 0);
  return canvas;
}

// The zoom and pan all views share: ``scale`` screen pixels per image pixel, (cx, cy) the image point at the
// centre of each canvas. Listeners (the views) redraw when it changes.
export class SharedView {
  constructor() {
    this.scale = 1; this.cx = 0; this.cy = 0; this.listeners = [];
  }
  fit(rows, columns, width, height) {
    this.scale = Math.min(width / columns, height / rows);
    this.cx = columns / 2; this.cy = rows / 2;
    this.changed();
  }
  zoomAt(factor, imageX, imageY) {
    const scale = Math.min(64, Math.max(0.05, this.scale * factor));
    const kept = this.scale / scale;  // the point under the cursor stays there
    this.cx = imageX + (this.cx - imageX) * kept;
    this.cy = imageY + (this.cy - imageY) * kept;
    this.scale = scale;
    this.changed();
  }
  panBy(dx, dy) {
    this.cx -= dx / this.scale; this.cy -= dy / this.scale;
    this.changed();
  }
  changed() { for (const listener of this.listeners) listener(); }
}

// A canvas showing ``source`` (a rendered frame) through the shared view, with an optional overlay function
// called with the 2D context in image coordinates.
export class View {
  constructor(canvas, shared) {
    this.canvas = canvas; this.shared = shared; this.source = null; this.overlay = null;
    shared.listeners.push(() => this.draw());
  }
  show(source, overlay) {
    this.source = source; this.overlay = overlay;
    this.draw();
  }
  imagePoint(event) {
    const box = this.canvas.getBoundingClientRect();
    const x = (event.clientX - box.left) * (this.canvas.width / box.width);
    const y = (event.clientY - box.top) * (this.canvas.height / box.height);
    const { scale, cx, cy } = this.shared;
    return [cx + (x - this.canvas.width / 2) / scale, cy + (y - this.canvas.height / 2) / scale];
  }
  draw() {
    const context = this.canvas.getContext("2d");
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.fillStyle = "#000";
    context.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.source) return;
    const { scale, cx, cy } = this.shared;
    context.setTransform(scale, 0, 0, scale, this.canvas.width / 2 - cx * scale, this.canvas.height / 2 - cy * scale);
    context.imageSmoothingEnabled = scale < 1;  // enlarged: the pixels as they are, no interpolation
    context.drawImage(this.source, 0, 0);
    if (this.overlay) this.overlay(context, scale);
  }
}

const PAN_KEYS = { ArrowLeft: [40, 0], ArrowRight: [-40, 0], ArrowUp: [0, 40], ArrowDown: [0, -40] };

// Wheel zoom, drag pan, shift+drag window/level (``onWindow(dWidth, dLevel)``), double-click fit, on every view;
// from the keyboard once a view has the focus: + and - zoom, the arrows pan, 0 fits.
export function interact(views, shared, onWindow, onFit) {
  for (const view of views) {
    const canvas = view.canvas;
    canvas.tabIndex = 0;
    canvas.addEventListener("keydown", (event) => {
      if (event.key === "+" || event.key === "=") shared.zoomAt(1.25, shared.cx, shared.cy);
      else if (event.key === "-") shared.zoomAt(0.8, shared.cx, shared.cy);
      else if (event.key === "0") onFit();
      else if (PAN_KEYS[event.key]) shared.panBy(...PAN_KEYS[event.key]);
      else return;
      event.preventDefault();
    });
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      const [x, y] = view.imagePoint(event);
      shared.zoomAt(event.deltaY < 0 ? 1.25 : 0.8, x, y);
    }, { passive: false });
    canvas.addEventListener("dblclick", onFit);
    canvas.addEventListener("pointerdown", (event) => {
      canvas.setPointerCapture(event.pointerId);
      let last = [event.clientX, event.clientY];
      const ratio = canvas.width / canvas.getBoundingClientRect().width;
      const move = (moved) => {
        const dx = (moved.clientX - last[0]) * ratio, dy = (moved.clientY - last[1]) * ratio;
        last = [moved.clientX, moved.clientY];
        if (moved.shiftKey) onWindow(dx, dy);
        else shared.panBy(dx, dy);
      };
      const up = () => {
        canvas.removeEventListener("pointermove", move);
        canvas.removeEventListener("pointerup", up);
      };
      canvas.addEventListener("pointermove", move);
      canvas.addEventListener("pointerup", up);
    });
  }
}
