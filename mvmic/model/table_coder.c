/* The compiled hot paths of mvmicnet-w97-v3's lossy layer (Python module model._table_coder).

   - rANS with 16-bit words and 16-bit CDF tables (model/rans.md in words: Duda, arXiv 1311.2540;
     Giesen's ryg_rans): state x in [2^16, 2^32), words emitted low half first, in reverse.
   - Lookup-table contexts of the wavelet bands (model/table_contexts.py explains the context).
   - CDF 9/7 lifting along rows and columns, float64, the same expressions in the same order as
     model/lifting.py (compiled with -ffp-contract=off, so no fused multiply-add changes a bit).
   - Dequantisation of the detail bands (model/subbands.py's arithmetic).
   - The restoration filter of the decoded planes and the encoder's statistics for fitting it
     (mvmic/model/restoration.py, mvmic/model/enc_restoration.py): integer arithmetic when filtering.

   Every function takes Python buffers (numpy arrays, C-contiguous, of the dtypes named in the
   Python wrappers of model/table_contexts.py and model/lifting_kernels.py), checks their sizes,
   and releases the GIL while it works, so threads code images in parallel. Entropy coding is
   integer arithmetic only: every machine decodes the same symbols. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION 16
#define LOWER (1u << 16)
#define BUCKETS 16
#define DEPTH_SLOTS 6
#define COARSEST_SLOT (DEPTH_SLOTS - 1)
#define PASSES 4

static const int phase_rows[PASSES] = {0, 1, 0, 1};
static const int phase_columns[PASSES] = {0, 1, 1, 0};
static const int64_t thresholds[BUCKETS - 1] = {1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181};

static inline int bucket(int64_t value) {
    int b = 0;
    while (b < BUCKETS - 1 && value >= thresholds[b]) b++;
    return b;
}

static inline int64_t absolute(int64_t v) { return v < 0 ? -v : v; }

/* ---- tables ---------------------------------------------------------------------------------- */

typedef struct {
    const int32_t *cdfs;  /* (tables, stride) */
    const int32_t *lengths;
    const int32_t *offsets;
    Py_ssize_t stride, count;
} Tables;

/* ---- rANS encoder: words written downwards from head ------------------------------------------ */

typedef struct {
    uint64_t x;
    uint16_t *words;
    Py_ssize_t head;
} Encoder;

static inline void put(Encoder *e, uint32_t start, uint32_t freq, int scale_bits) {
    uint64_t limit = (uint64_t)freq << (32 - scale_bits);
    while (e->x >= limit) {
        e->words[--e->head] = (uint16_t)(e->x & 0xFFFF);
        e->x >>= 16;
    }
    e->x = ((e->x / freq) << scale_bits) + e->x % freq + start;
}

static inline void put_symbol(Encoder *e, int64_t symbol, int64_t table, const Tables *t) {
    const int32_t *cdf = t->cdfs + table * t->stride;
    int64_t escape = t->lengths[table] - 2, position = symbol - t->offsets[table];
    if (position >= 0 && position < escape) {
        put(e, cdf[position], cdf[position + 1] - cdf[position], PRECISION);
        return;
    }
    uint64_t u = symbol >= 0 ? 2 * (uint64_t)symbol : 2 * (uint64_t)(-symbol) - 1;
    int bits = 0;
    while ((u >> bits) > 0) bits++;
    for (int chunk = 0; chunk < (bits + 15) / 16; chunk++) {  /* low chunk first: it decodes last */
        int shift = 16 * chunk, width = bits - shift < 16 ? bits - shift : 16;
        put(e, (uint32_t)((u >> shift) & ((1u << width) - 1)), 1, width);
    }
    put(e, (uint32_t)bits, 1, 5);
    put(e, cdf[escape], cdf[escape + 1] - cdf[escape], PRECISION);
}

/* ---- rANS decoder ------------------------------------------------------------------------------ */

typedef struct {
    uint64_t x;
    const uint8_t *data;  /* little-endian 16-bit words */
    Py_ssize_t words, position;
} Decoder;

static inline uint64_t word_at(const Decoder *d, Py_ssize_t i) {
    return i < d->words ? (uint64_t)d->data[2 * i] | ((uint64_t)d->data[2 * i + 1] << 8) : 0;  /* past the end: 0 */
}

static inline void refill(Decoder *d) {
    while (d->x < LOWER) d->x = (d->x << 16) | word_at(d, d->position++);
}

static inline uint32_t take(Decoder *d, int scale_bits) {
    uint32_t value = (uint32_t)(d->x & ((1u << scale_bits) - 1));
    d->x >>= scale_bits;
    refill(d);
    return value;
}

static inline int64_t take_symbol(Decoder *d, int64_t table, const Tables *t) {
    const int32_t *cdf = t->cdfs + table * t->stride;
    uint32_t slot = (uint32_t)(d->x & ((1u << PRECISION) - 1));
    int64_t low = 0, high = t->lengths[table] - 2, zero = -t->offsets[table];
    if (zero >= 0 && zero < high && cdf[zero] <= (int64_t)slot && (int64_t)slot < cdf[zero + 1]) {
        low = high = zero;  /* most symbols are 0 */
    }
    while (low < high) {
        int64_t middle = (low + high + 1) >> 1;
        if (cdf[middle] <= (int64_t)slot) low = middle; else high = middle - 1;
    }
    uint32_t first = (uint32_t)cdf[low], freq = (uint32_t)(cdf[low + 1] - cdf[low]);
    d->x = freq * (d->x >> PRECISION) + slot - first;
    refill(d);
    if (low < t->lengths[table] - 2) return t->offsets[table] + low;
    int bits = (int)take(d, 5);
    uint64_t u = 0;
    for (int chunk = (bits + 15) / 16 - 1; chunk >= 0; chunk--) {
        int shift = 16 * chunk, width = bits - shift < 16 ? bits - shift : 16;
        u |= (uint64_t)take(d, width) << shift;
    }
    return (u & 1) ? -(int64_t)((u + 1) >> 1) : (int64_t)(u >> 1);
}

/* ---- contexts -------------------------------------------------------------------------------- */

typedef struct {
    int64_t *flat;
    const int64_t *starts, *rows, *columns;
    int levels;
} Bands;

/* lut[cell] of every coefficient pass `phase` of band (level, orientation) codes, raster order. */
static Py_ssize_t pass_tables(const Bands *b, int level, int orientation, int phase, const int32_t *lut, int64_t *out) {
    int band = 3 * level + orientation, parent = band - 3;
    const int64_t *flat = b->flat;
    int64_t base = b->starts[band], height = b->rows[band], width = b->columns[band];
    int slot = level == 0 ? COARSEST_SLOT : b->levels - level - 1;
    int64_t first_cell = ((int64_t)(orientation * DEPTH_SLOTS + slot) * PASSES + phase) * BUCKETS * BUCKETS;
    int diagonal = phase == 1 || phase == 3, direct = phase >= 2;
    Py_ssize_t k = 0;
    for (int64_t i = phase_rows[phase]; i < height; i += 2) {
        int64_t here = base + i * width, up = i > 0 ? here - width : -1, down = i + 1 < height ? here + width : -1;
        int64_t parent_row = -1, parent_last = 0, parent_up = -1, parent_down = -1;
        if (level > 0) {
            int64_t y = i >> 1 < b->rows[parent] - 1 ? i >> 1 : b->rows[parent] - 1;
            parent_row = b->starts[parent] + y * b->columns[parent];
            parent_last = b->columns[parent] - 1;
            if (y > 0) parent_up = parent_row - b->columns[parent];
            if (y + 1 < b->rows[parent]) parent_down = parent_row + b->columns[parent];
        }
        int64_t sibling_row[2] = {0, 0}, sibling_last[2] = {0, 0};
        for (int s = 0; s < orientation; s++) {
            int64_t sb = 3 * level + s, y = i < b->rows[sb] - 1 ? i : b->rows[sb] - 1;
            sibling_row[s] = b->starts[sb] + y * b->columns[sb];
            sibling_last[s] = b->columns[sb] - 1;
        }
        for (int64_t j = phase_columns[phase]; j < width; j += 2) {
            int left = j > 0, right = j + 1 < width;
            int64_t own = 0;
            if (diagonal) {
                if (up >= 0) own += (left ? absolute(flat[up + j - 1]) : 0) + (right ? absolute(flat[up + j + 1]) : 0);
                if (down >= 0) own += (left ? absolute(flat[down + j - 1]) : 0) + (right ? absolute(flat[down + j + 1]) : 0);
            }
            if (direct) {
                int64_t near = (left ? absolute(flat[here + j - 1]) : 0) + (right ? absolute(flat[here + j + 1]) : 0);
                if (up >= 0) near += absolute(flat[up + j]);
                if (down >= 0) near += absolute(flat[down + j]);
                own += 2 * near;
            }
            int64_t other = 0;
            if (parent_row >= 0) {
                int64_t x = (j >> 1) < parent_last ? (j >> 1) : parent_last, around = 0;
                other += 2 * absolute(flat[parent_row + x]);
                if (x > 0) around += absolute(flat[parent_row + x - 1]);
                if (x < parent_last) around += absolute(flat[parent_row + x + 1]);
                if (parent_up >= 0) around += absolute(flat[parent_up + x]);
                if (parent_down >= 0) around += absolute(flat[parent_down + x]);
                other += around >> 1;
            }
            for (int s = 0; s < orientation; s++) other += absolute(flat[sibling_row[s] + (j < sibling_last[s] ? j : sibling_last[s])]);
            out[k++] = lut[first_cell + bucket(own) * BUCKETS + bucket(other)];
        }
    }
    return k;
}

/* Every detail coefficient and lut[its cell], in coding order; returns how many. */
static Py_ssize_t coding_order_of(const Bands *b, const int32_t *lut, int64_t *symbols, int64_t *tables) {
    Py_ssize_t k = 0;
    for (int level = 0; level < b->levels; level++) {
        for (int orientation = 0; orientation < 3; orientation++) {
            int band = 3 * level + orientation;
            for (int phase = 0; phase < PASSES; phase++) {
                pass_tables(b, level, orientation, phase, lut, tables + k);
                for (int64_t i = phase_rows[phase]; i < b->rows[band]; i += 2) {
                    const int64_t *row = b->flat + b->starts[band] + i * b->columns[band];
                    for (int64_t j = phase_columns[phase]; j < b->columns[band]; j += 2) symbols[k++] = row[j];
                }
            }
        }
    }
    return k;
}

/* ---- argument handling ----------------------------------------------------------------------- */

typedef struct {
    Py_buffer view;
    int held;
} Buffer;

static int get_buffer(PyObject *object, Buffer *buffer, Py_ssize_t itemsize, Py_ssize_t count, int writable, const char *name) {
    if (PyObject_GetBuffer(object, &buffer->view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    buffer->held = 1;
    if (buffer->view.itemsize != itemsize || (count >= 0 && buffer->view.len / itemsize < count)) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd items of %zd bytes", name, count, itemsize);
        return -1;
    }
    return 0;
}

static void release(Buffer *buffers, int n) {
    for (int i = 0; i < n; i++) if (buffers[i].held) PyBuffer_Release(&buffers[i].view);
}

/* Bands and tables from (flat, starts, rows, columns, levels) and (cdfs, stride, lengths, offsets). */
static int parse_layout(PyObject **objects, int levels, int writable, Buffer *buffers, Bands *bands) {
    Py_ssize_t n = 3 * (Py_ssize_t)levels;
    if (levels < 0) { PyErr_SetString(PyExc_ValueError, "negative level count"); return -1; }
    if (get_buffer(objects[1], &buffers[1], 8, n, 0, "starts") < 0 || get_buffer(objects[2], &buffers[2], 8, n, 0, "rows") < 0 ||
        get_buffer(objects[3], &buffers[3], 8, n, 0, "columns") < 0) return -1;
    const int64_t *starts = buffers[1].view.buf, *rows = buffers[2].view.buf, *columns = buffers[3].view.buf;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (rows[i] < 1 || columns[i] < 1 || starts[i] != total) {
            PyErr_SetString(PyExc_ValueError, "band layout is not contiguous bands in coding order");
            return -1;
        }
        total += rows[i] * columns[i];
    }
    if (get_buffer(objects[0], &buffers[0], 8, total, writable, "flat") < 0) return -1;
    bands->flat = buffers[0].view.buf;
    bands->starts = starts; bands->rows = rows; bands->columns = columns; bands->levels = levels;
    return 0;
}

static int parse_tables(PyObject *cdfs, Py_ssize_t stride, PyObject *lengths, PyObject *offsets, Buffer *buffers, Tables *t) {
    if (get_buffer(lengths, &buffers[1], 4, -1, 0, "lengths") < 0) return -1;
    t->count = buffers[1].view.len / 4;
    if (get_buffer(cdfs, &buffers[0], 4, t->count * stride, 0, "cdfs") < 0 || get_buffer(offsets, &buffers[2], 4, t->count, 0, "offsets") < 0) return -1;
    t->cdfs = buffers[0].view.buf; t->lengths = buffers[1].view.buf; t->offsets = buffers[2].view.buf; t->stride = stride;
    for (Py_ssize_t i = 0; i < t->count; i++) {
        if (t->lengths[i] < 3 || t->lengths[i] > stride || t->cdfs[i * stride + t->lengths[i] - 1] != (1 << PRECISION)) {
            PyErr_SetString(PyExc_ValueError, "coding tables are not 16-bit CDFs");
            return -1;
        }
    }
    return 0;
}

static int check_lut(const Buffer *lut, const Tables *t, Py_ssize_t cells) {
    const int32_t *values = lut->view.buf;
    for (Py_ssize_t i = 0; i < cells; i++) {
        if (values[i] < 0 || values[i] >= t->count) { PyErr_SetString(PyExc_ValueError, "lookup table names a missing table"); return -1; }
    }
    return 0;
}

#define CELLS (3 * DEPTH_SLOTS * PASSES * BUCKETS * BUCKETS)

/* encode_plane(residual int64[n], low_table, flat, starts, rows, columns, levels, lut int32[CELLS],
                cdfs int32[T*stride], stride, lengths int32[T], offsets int32[T]) -> bytes (LE words) */
static PyObject *encode_plane(PyObject *self, PyObject *args) {
    PyObject *objects[4], *residual_object, *lut_object, *cdfs, *lengths, *offsets;
    long long low_table, stride;
    int levels;
    if (!PyArg_ParseTuple(args, "OLOOOOiOOLOO", &residual_object, &low_table, &objects[0], &objects[1], &objects[2],
                          &objects[3], &levels, &lut_object, &cdfs, &stride, &lengths, &offsets)) return NULL;
    Buffer buffers[9] = {0};
    Bands bands;
    Tables tables;
    PyObject *result = NULL;
    uint16_t *words = NULL;
    int64_t *symbols = NULL, *chosen = NULL;
    if (parse_layout(objects, levels, 0, buffers, &bands) < 0 || parse_tables(cdfs, stride, lengths, offsets, buffers + 4, &tables) < 0 ||
        get_buffer(residual_object, &buffers[7], 8, -1, 0, "residual") < 0 || get_buffer(lut_object, &buffers[8], 4, CELLS, 0, "lut") < 0 ||
        check_lut(&buffers[8], &tables, CELLS) < 0) goto done;
    if (low_table < 0 || low_table >= tables.count) { PyErr_SetString(PyExc_ValueError, "low-band table out of range"); goto done; }
    Py_ssize_t n_low = buffers[7].view.len / 8, n = buffers[0].view.len / 8, capacity = 4 * (n_low + n) + 8;
    words = malloc(capacity * sizeof(uint16_t));
    symbols = malloc((n + 1) * sizeof(int64_t));
    chosen = malloc((n + 1) * sizeof(int64_t));
    if (!words || !symbols || !chosen) { PyErr_NoMemory(); goto done; }
    const int64_t *residual = buffers[7].view.buf;
    const int32_t *lut = buffers[8].view.buf;
    for (Py_ssize_t i = 0; i < n_low; i++) {
        if (absolute(residual[i]) >= (1ll << 30)) { PyErr_SetString(PyExc_ValueError, "a coefficient is 2**30 or larger"); goto done; }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (absolute(bands.flat[i]) >= (1ll << 30)) { PyErr_SetString(PyExc_ValueError, "a coefficient is 2**30 or larger"); goto done; }
    }
    Encoder e = {LOWER, words, capacity};
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t k = coding_order_of(&bands, lut, symbols, chosen);
    for (Py_ssize_t i = k - 1; i >= 0; i--) put_symbol(&e, symbols[i], chosen[i], &tables);
    for (Py_ssize_t i = n_low - 1; i >= 0; i--) put_symbol(&e, residual[i], low_table, &tables);
    e.words[--e.head] = (uint16_t)(e.x & 0xFFFF);  /* the final state: high word first */
    e.words[--e.head] = (uint16_t)(e.x >> 16);
    Py_END_ALLOW_THREADS
    result = PyBytes_FromStringAndSize(NULL, 2 * (capacity - e.head));
    if (result) {
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
        for (Py_ssize_t i = e.head; i < capacity; i++) {
            out[2 * (i - e.head)] = (uint8_t)(words[i] & 0xFF);
            out[2 * (i - e.head) + 1] = (uint8_t)(words[i] >> 8);
        }
    }
done:
    free(words); free(symbols); free(chosen);
    release(buffers, 9);
    return result;
}

/* decode_plane(words bytes, low int64[h*w] (out, zeros), width, low_table, flat (out, zeros), starts, rows,
                columns, levels, decoded_levels, lut, cdfs, stride, lengths, offsets) -> None */
static PyObject *decode_plane(PyObject *self, PyObject *args) {
    PyObject *objects[4], *stream_object, *low_object, *lut_object, *cdfs, *lengths, *offsets;
    long long width, low_table, stride;
    int levels, decoded_levels;
    if (!PyArg_ParseTuple(args, "OOLLOOOOiiOOLOO", &stream_object, &low_object, &width, &low_table, &objects[0], &objects[1],
                          &objects[2], &objects[3], &levels, &decoded_levels, &lut_object, &cdfs, &stride, &lengths, &offsets)) return NULL;
    Buffer buffers[10] = {0};
    Bands bands;
    Tables tables;
    PyObject *result = NULL;
    int64_t *chosen = NULL;
    if (parse_layout(objects, levels, 1, buffers, &bands) < 0 || parse_tables(cdfs, stride, lengths, offsets, buffers + 4, &tables) < 0 ||
        get_buffer(stream_object, &buffers[7], 1, -1, 0, "words") < 0 || get_buffer(low_object, &buffers[8], 8, -1, 1, "low") < 0 ||
        get_buffer(lut_object, &buffers[9], 4, CELLS, 0, "lut") < 0 || check_lut(&buffers[9], &tables, CELLS) < 0) goto done;
    if (low_table < 0 || low_table >= tables.count || width < 1 || decoded_levels < 0 || decoded_levels > levels) {
        PyErr_SetString(PyExc_ValueError, "low-band table, width or level count out of range");
        goto done;
    }
    Py_ssize_t largest = 1;
    for (int band = 0; band < 3 * levels; band++) {
        Py_ssize_t coded = ((bands.rows[band] + 1) / 2) * ((bands.columns[band] + 1) / 2);
        if (coded > largest) largest = coded;
    }
    chosen = malloc(largest * sizeof(int64_t));
    if (!chosen) { PyErr_NoMemory(); goto done; }
    int64_t *low = buffers[8].view.buf;
    Py_ssize_t n_low = buffers[8].view.len / 8;
    const int32_t *lut = buffers[9].view.buf;
    Decoder d = {0, buffers[7].view.buf, buffers[7].view.len / 2, 2};
    Py_BEGIN_ALLOW_THREADS
    d.x = (word_at(&d, 0) << 16) | word_at(&d, 1);
    if (d.x < LOWER) d.x |= LOWER;  /* never in a valid stream (its final state is >= 2^16); 0 would never refill */
    for (Py_ssize_t i = 0; i < n_low; i++) {
        int64_t value = take_symbol(&d, low_table, &tables);
        if (i % width > 0) value += low[i - 1];
        else if (i > 0) value += low[i - width];
        low[i] = value;
    }
    for (int level = 0; level < decoded_levels; level++) {
        for (int orientation = 0; orientation < 3; orientation++) {
            int band = 3 * level + orientation;
            for (int phase = 0; phase < PASSES; phase++) {
                pass_tables(&bands, level, orientation, phase, lut, chosen);
                Py_ssize_t k = 0;
                for (int64_t i = phase_rows[phase]; i < bands.rows[band]; i += 2) {
                    int64_t *row = bands.flat + bands.starts[band] + i * bands.columns[band];
                    for (int64_t j = phase_columns[phase]; j < bands.columns[band]; j += 2) row[j] = take_symbol(&d, chosen[k++], &tables);
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(chosen);
    release(buffers, 10);
    return result;
}

/* coding_order(flat, starts, rows, columns, levels, lut int32[CELLS], symbols int64[n] (out), tables int64[n] (out))
   -> None: every detail coefficient and lut[its cell] in coding order (fitting uses an identity lut). */
static PyObject *coding_order(PyObject *self, PyObject *args) {
    PyObject *objects[4], *lut_object, *symbols_object, *tables_object;
    int levels;
    if (!PyArg_ParseTuple(args, "OOOOiOOO", &objects[0], &objects[1], &objects[2], &objects[3], &levels, &lut_object,
                          &symbols_object, &tables_object)) return NULL;
    Buffer buffers[7] = {0};
    Bands bands;
    PyObject *result = NULL;
    if (parse_layout(objects, levels, 0, buffers, &bands) < 0 || get_buffer(lut_object, &buffers[4], 4, CELLS, 0, "lut") < 0) goto done;
    Py_ssize_t n = buffers[0].view.len / 8;
    if (get_buffer(symbols_object, &buffers[5], 8, n, 1, "symbols") < 0 || get_buffer(tables_object, &buffers[6], 8, n, 1, "tables") < 0) goto done;
    int64_t *symbols = buffers[5].view.buf, *tables = buffers[6].view.buf;
    const int32_t *lut = buffers[4].view.buf;
    Py_BEGIN_ALLOW_THREADS
    coding_order_of(&bands, lut, symbols, tables);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release(buffers, 7);
    return result;
}

/* ---- CDF 9/7 lifting (model/lifting.py, in the same float64 operations) ------------------------ */

static const double ALPHA = -1.586134342059924, BETA = -0.052980118572961, GAMMA = 0.882911075530934,
                    DELTA = 0.443506852043971, KAPPA = 1.230174104914001;

/* One 1-D forward transform of n samples read with stride `in_stride` into s (n_even) and d (n_odd);
   the last sample's mirrored neighbour is handled outside the loops, so the loops vectorise. */
static void forward_1d(const double *restrict x, Py_ssize_t n, Py_ssize_t in_stride, double *restrict s, double *restrict d) {
    Py_ssize_t n_even = (n + 1) / 2, n_odd = n / 2;
    for (Py_ssize_t i = 0; i < n_even; i++) s[i] = x[2 * i * in_stride];
    for (Py_ssize_t i = 0; i < n_odd; i++) d[i] = x[(2 * i + 1) * in_stride];
    const double pd[2] = {ALPHA, GAMMA}, ps[2] = {BETA, DELTA};
    for (int step = 0; step < 2; step++) {
        const double cd = pd[step], cs = ps[step];
        Py_ssize_t inner = n_odd < n_even - 1 ? n_odd : n_even - 1;  /* d[i] with s[i + 1] inside */
        for (Py_ssize_t i = 0; i < inner; i++) d[i] = d[i] + cd * (s[i] + s[i + 1]);
        for (Py_ssize_t i = inner; i < n_odd; i++) d[i] = d[i] + cd * (s[i] + s[n_even - 1]);
        s[0] = s[0] + cs * (d[0] + d[0]);
        Py_ssize_t last = n_even < n_odd ? n_even : n_odd;  /* s[i] with d[i - 1] and d[i] inside */
        for (Py_ssize_t i = 1; i < last; i++) s[i] = s[i] + cs * (d[i - 1] + d[i]);
        for (Py_ssize_t i = last > 1 ? last : 1; i < n_even; i++) s[i] = s[i] + cs * (d[i - 1] + d[n_odd - 1]);
    }
    for (Py_ssize_t i = 0; i < n_even; i++) s[i] = s[i] / KAPPA;
    for (Py_ssize_t i = 0; i < n_odd; i++) d[i] = d[i] * (KAPPA / 2);
}

static void inverse_1d(const double *restrict low, const double *restrict high, Py_ssize_t n_even, Py_ssize_t n_odd,
                       double *restrict s, double *restrict d, double *restrict out, Py_ssize_t out_stride) {
    for (Py_ssize_t i = 0; i < n_even; i++) s[i] = low[i] * KAPPA;
    for (Py_ssize_t i = 0; i < n_odd; i++) d[i] = high[i] * (2 / KAPPA);
    const double ps[2] = {DELTA, BETA}, pd[2] = {GAMMA, ALPHA};
    for (int step = 0; step < 2; step++) {
        const double cd = pd[step], cs = ps[step];
        s[0] = s[0] - cs * (d[0] + d[0]);
        Py_ssize_t last = n_even < n_odd ? n_even : n_odd;
        for (Py_ssize_t i = 1; i < last; i++) s[i] = s[i] - cs * (d[i - 1] + d[i]);
        for (Py_ssize_t i = last > 1 ? last : 1; i < n_even; i++) s[i] = s[i] - cs * (d[i - 1] + d[n_odd - 1]);
        Py_ssize_t inner = n_odd < n_even - 1 ? n_odd : n_even - 1;
        for (Py_ssize_t i = 0; i < inner; i++) d[i] = d[i] - cd * (s[i] + s[i + 1]);
        for (Py_ssize_t i = inner; i < n_odd; i++) d[i] = d[i] - cd * (s[i] + s[n_even - 1]);
    }
    for (Py_ssize_t i = 0; i < n_even; i++) out[2 * i * out_stride] = s[i];
    for (Py_ssize_t i = 0; i < n_odd; i++) out[(2 * i + 1) * out_stride] = d[i];
}

/* The columns variant works on whole rows at a time (cache friendly): the same per-element operations. */
static void forward_columns(const double *restrict x, Py_ssize_t rows, Py_ssize_t width, double *restrict s, double *restrict d) {
    Py_ssize_t n_even = (rows + 1) / 2, n_odd = rows / 2;
    for (Py_ssize_t i = 0; i < n_even; i++) memcpy(s + i * width, x + 2 * i * width, width * sizeof(double));
    for (Py_ssize_t i = 0; i < n_odd; i++) memcpy(d + i * width, x + (2 * i + 1) * width, width * sizeof(double));
    const double pd[2] = {ALPHA, GAMMA}, ps[2] = {BETA, DELTA};
    for (int step = 0; step < 2; step++) {
        for (Py_ssize_t i = 0; i < n_odd; i++) {
            double *restrict di = d + i * width;
            const double *restrict a = s + i * width, *restrict b = s + (i + 1 < n_even ? i + 1 : n_even - 1) * width;
            for (Py_ssize_t j = 0; j < width; j++) di[j] = di[j] + pd[step] * (a[j] + b[j]);
        }
        for (Py_ssize_t i = 0; i < n_even; i++) {
            double *restrict si = s + i * width;
            const double *restrict a = d + (i >= 1 ? i - 1 : 0) * width, *restrict b = d + (i < n_odd ? i : n_odd - 1) * width;
            for (Py_ssize_t j = 0; j < width; j++) si[j] = si[j] + ps[step] * (a[j] + b[j]);
        }
    }
    for (Py_ssize_t i = 0; i < n_even * width; i++) s[i] = s[i] / KAPPA;
    for (Py_ssize_t i = 0; i < n_odd * width; i++) d[i] = d[i] * (KAPPA / 2);
}

static void inverse_columns(const double *restrict low, const double *restrict high, Py_ssize_t n_even, Py_ssize_t n_odd,
                            Py_ssize_t width, double *restrict s, double *restrict d, double *restrict out) {
    for (Py_ssize_t i = 0; i < n_even * width; i++) s[i] = low[i] * KAPPA;
    for (Py_ssize_t i = 0; i < n_odd * width; i++) d[i] = high[i] * (2 / KAPPA);
    const double ps[2] = {DELTA, BETA}, pd[2] = {GAMMA, ALPHA};
    for (int step = 0; step < 2; step++) {
        for (Py_ssize_t i = 0; i < n_even; i++) {
            double *restrict si = s + i * width;
            const double *restrict a = d + (i >= 1 ? i - 1 : 0) * width, *restrict b = d + (i < n_odd ? i : n_odd - 1) * width;
            for (Py_ssize_t j = 0; j < width; j++) si[j] = si[j] - ps[step] * (a[j] + b[j]);
        }
        for (Py_ssize_t i = 0; i < n_odd; i++) {
            double *restrict di = d + i * width;
            const double *restrict a = s + i * width, *restrict b = s + (i + 1 < n_even ? i + 1 : n_even - 1) * width;
            for (Py_ssize_t j = 0; j < width; j++) di[j] = di[j] - pd[step] * (a[j] + b[j]);
        }
    }
    for (Py_ssize_t i = 0; i < n_even; i++) memcpy(out + 2 * i * width, s + i * width, width * sizeof(double));
    for (Py_ssize_t i = 0; i < n_odd; i++) memcpy(out + (2 * i + 1) * width, d + i * width, width * sizeof(double));
}

/* analysis_level(x float64[h*w], h, w, low, lh, hl, hh (outs)) -> None: one level of model.lifting.analysis. */
static PyObject *analysis_level(PyObject *self, PyObject *args) {
    PyObject *objects[5];
    Py_ssize_t h, w;
    if (!PyArg_ParseTuple(args, "OnnOOOO", &objects[0], &h, &w, &objects[1], &objects[2], &objects[3], &objects[4])) return NULL;
    if (h < 2 || w < 2) { PyErr_SetString(PyExc_ValueError, "a wavelet level needs at least 2 x 2 samples"); return NULL; }
    Py_ssize_t he = (h + 1) / 2, ho = h / 2, we = (w + 1) / 2, wo = w / 2;
    Buffer buffers[5] = {0};
    PyObject *result = NULL;
    double *low_columns = NULL, *high_columns = NULL, *scratch = NULL;
    if (get_buffer(objects[0], &buffers[0], 8, h * w, 0, "x") < 0 || get_buffer(objects[1], &buffers[1], 8, he * we, 1, "low") < 0 ||
        get_buffer(objects[2], &buffers[2], 8, ho * we, 1, "lh") < 0 || get_buffer(objects[3], &buffers[3], 8, he * wo, 1, "hl") < 0 ||
        get_buffer(objects[4], &buffers[4], 8, ho * wo, 1, "hh") < 0) goto done;
    low_columns = malloc(h * we * sizeof(double));
    high_columns = malloc((h * wo + 1) * sizeof(double));
    scratch = malloc(w * sizeof(double));
    if (!low_columns || !high_columns || !scratch) { PyErr_NoMemory(); goto done; }
    const double *x = buffers[0].view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < h; r++) forward_1d(x + r * w, w, 1, low_columns + r * we, high_columns + r * wo);
    forward_columns(low_columns, h, we, buffers[1].view.buf, buffers[2].view.buf);
    forward_columns(high_columns, h, wo, buffers[3].view.buf, buffers[4].view.buf);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(low_columns); free(high_columns); free(scratch);
    release(buffers, 5);
    return result;
}

/* synthesis_level(low, lh, hl, hh, h, w, out float64[h*w]) -> None: one level of model.lifting.synthesis. */
static PyObject *synthesis_level(PyObject *self, PyObject *args) {
    PyObject *objects[5];
    Py_ssize_t h, w;
    if (!PyArg_ParseTuple(args, "OOOOnnO", &objects[1], &objects[2], &objects[3], &objects[4], &h, &w, &objects[0])) return NULL;
    if (h < 2 || w < 2) { PyErr_SetString(PyExc_ValueError, "a wavelet level needs at least 2 x 2 samples"); return NULL; }
    Py_ssize_t he = (h + 1) / 2, ho = h / 2, we = (w + 1) / 2, wo = w / 2;
    Buffer buffers[5] = {0};
    PyObject *result = NULL;
    double *low_columns = NULL, *high_columns = NULL, *s = NULL, *d = NULL;
    if (get_buffer(objects[0], &buffers[0], 8, h * w, 1, "out") < 0 || get_buffer(objects[1], &buffers[1], 8, he * we, 0, "low") < 0 ||
        get_buffer(objects[2], &buffers[2], 8, ho * we, 0, "lh") < 0 || get_buffer(objects[3], &buffers[3], 8, he * wo, 0, "hl") < 0 ||
        get_buffer(objects[4], &buffers[4], 8, ho * wo, 0, "hh") < 0) goto done;
    Py_ssize_t larger = h * (we > wo ? we : wo);
    low_columns = malloc(h * we * sizeof(double));
    high_columns = malloc((h * wo + 1) * sizeof(double));
    s = malloc((larger + w) * sizeof(double));
    d = malloc((larger + w) * sizeof(double));
    if (!low_columns || !high_columns || !s || !d) { PyErr_NoMemory(); goto done; }
    double *out = buffers[0].view.buf;
    Py_BEGIN_ALLOW_THREADS
    inverse_columns(buffers[1].view.buf, buffers[2].view.buf, he, ho, we, s, d, low_columns);
    inverse_columns(buffers[3].view.buf, buffers[4].view.buf, he, ho, wo, s, d, high_columns);
    for (Py_ssize_t r = 0; r < h; r++) inverse_1d(low_columns + r * we, high_columns + r * wo, we, wo, s, d, out + r * w, 1);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(low_columns); free(high_columns); free(s); free(d);
    release(buffers, 5);
    return result;
}

/* dequantize(flat int64[n], out float64[n], band_ends int64[b], steps float64[b], reconstruction) -> None:
   sign(q) (|q| + reconstruction) step of each band, as model/subbands.py computes it. */
static PyObject *dequantize(PyObject *self, PyObject *args) {
    PyObject *objects[4];
    double reconstruction;
    if (!PyArg_ParseTuple(args, "OOOOd", &objects[0], &objects[1], &objects[2], &objects[3], &reconstruction)) return NULL;
    Buffer buffers[4] = {0};
    PyObject *result = NULL;
    if (get_buffer(objects[0], &buffers[0], 8, -1, 0, "flat") < 0 || get_buffer(objects[2], &buffers[2], 8, -1, 0, "band_ends") < 0) goto done;
    Py_ssize_t n = buffers[0].view.len / 8, bands = buffers[2].view.len / 8;
    if (get_buffer(objects[1], &buffers[1], 8, n, 1, "out") < 0 || get_buffer(objects[3], &buffers[3], 8, bands, 0, "steps") < 0) goto done;
    const int64_t *flat = buffers[0].view.buf, *ends = buffers[2].view.buf;
    const double *steps = buffers[3].view.buf;
    double *out = buffers[1].view.buf;
    for (Py_ssize_t b = 0; b < bands; b++) {
        if (ends[b] > n || (b > 0 && ends[b] < ends[b - 1])) { PyErr_SetString(PyExc_ValueError, "band ends out of order"); goto done; }
    }
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t start = 0;
    for (Py_ssize_t b = 0; b < bands; b++) {
        double step = steps[b];
        for (Py_ssize_t i = start; i < ends[b]; i++) {
            int64_t q = flat[i];
            double sign = q > 0 ? 1.0 : (q < 0 ? -1.0 : 0.0);
            out[i] = sign * ((double)absolute(q) + reconstruction) * step;
        }
        start = ends[b];
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release(buffers, 4);
    return result;
}

/* ---- restoration filter (mvmic/model/restoration.py) ------------------------------------------- */

#define TAPS 12
#define RESTORATION_SHIFT 8
#define SAMPLE_LIMIT ((int64_t)1 << 18)  /* beyond any plane of 16-bit samples and their RCT */
/* The 5 x 5 window's offsets (dy, dx) after the centre in raster order; each tap also takes the mirror. */
static const int tap_rows[TAPS] = {0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2};
static const int tap_columns[TAPS] = {1, 2, -2, -1, 0, 1, 2, -2, -1, 0, 1, 2};

static inline Py_ssize_t clamp_index(Py_ssize_t i, Py_ssize_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

/* The tap features at (y, x): p[y+dy, x+dx] + p[y-dy, x-dx] - 2 p[y, x], edges replicated. */
static inline void tap_features(const int64_t *p, Py_ssize_t rows, Py_ssize_t columns, Py_ssize_t y, Py_ssize_t x,
                                int64_t *features) {
    int64_t centre = p[y * columns + x];
    int inside = y >= 2 && y < rows - 2 && x >= 2 && x < columns - 2;
    for (int k = 0; k < TAPS; k++) {
        Py_ssize_t y1 = y + tap_rows[k], x1 = x + tap_columns[k], y2 = y - tap_rows[k], x2 = x - tap_columns[k];
        if (!inside) {
            y1 = clamp_index(y1, rows); x1 = clamp_index(x1, columns);
            y2 = clamp_index(y2, rows); x2 = clamp_index(x2, columns);
        }
        features[k] = p[y1 * columns + x1] + p[y2 * columns + x2] - 2 * centre;
    }
}

/* One output row of the filter, compiled twice where the compiler can (x86-64: AVX2 and the baseline), chosen at
   load time by the CPU: exact integer values in float64, so both give the same result. lines[2 + d] is the input
   row d rows away (d = -2..2), with 2 replicated samples at each end; sum is a row of scratch. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)  /* clones need ifunc */
__attribute__((target_clones("avx2", "default")))
#endif
static void filter_row(double *const *lines, Py_ssize_t columns, const double *taps, double centre, double *sum,
                       int64_t *out) {
    const double half = (double)(1 << (RESTORATION_SHIFT - 1)), scale = 1.0 / (double)(1 << RESTORATION_SHIFT);
    const double *row = lines[2] + 2;
    for (Py_ssize_t x = 0; x < columns; x++) sum[x] = half + centre * row[x];
    for (int k = 0; k < TAPS; k++) {  /* tap by tap along the row: the loop the compiler vectorises */
        const double *ahead = lines[2 + tap_rows[k]] + 2 + tap_columns[k];
        const double *behind = lines[2 - tap_rows[k]] + 2 - tap_columns[k], t = taps[k];
        for (Py_ssize_t x = 0; x < columns; x++) sum[x] += t * (ahead[x] + behind[x]);
    }
    for (Py_ssize_t x = 0; x < columns; x++) {
        double scaled = sum[x] * scale;
        int64_t truncated = (int64_t)scaled;
        out[x] = (int64_t)row[x] + truncated - (scaled < (double)truncated);  /* floor */
    }
}

static inline double bounded(double v) { return v > SAMPLE_LIMIT ? SAMPLE_LIMIT : (v < -SAMPLE_LIMIT ? -SAMPLE_LIMIT : v); }

/* round(v) half to even, as numpy.round and nearbyint in the default rounding mode, for |v| <= 2^51: adding and
   subtracting 1.5 * 2^52 leaves no fraction bits, and IEEE addition rounds half to even. Inline and vectorisable
   (nearbyint is a library call without SSE4.1); without -ffast-math the compiler keeps both operations. */
static inline double round_even(double v) {
    const double magic = 6755399441055744.0;
    return (v + magic) - magic;
}

/* The filter of one plane into out: integers (int64) or, with float64 input, round(v * scale + offset) first,
   the decoder's rounding of the synthesis (half to even, as numpy.round; no fused multiply-add). Samples beyond
   +-2^18, which only a damaged stream decodes to, are clamped to it. NULL taps: the rounding alone. The input
   rows pass through a ring of 5 padded rows, so the working memory is a few rows, whatever the plane's size. */
/* What restoration_errors measures: the squared error against original of the plane and of the filtered plane,
   each clipped to [low, high] first, as the decoder clips stored values. */
typedef struct {
    const int64_t *original;
    int64_t low, high;
    double before, after;
} ErrorSums;

static inline int64_t clipped(int64_t v, int64_t low, int64_t high) { return v < low ? low : (v > high ? high : v); }

static int filter_plane(const int64_t *integers, const double *floats, double scale, double offset, Py_ssize_t rows,
                        Py_ssize_t columns, const int64_t *c, int64_t *out, ErrorSums *sums) {
    if (!c) {
        for (Py_ssize_t i = 0; i < rows * columns; i++) out[i] = (int64_t)round_even(bounded(floats[i] * scale + offset));
        return 0;
    }
    Py_ssize_t width = columns + 4;
    double *ring = malloc(sizeof(double) * 6 * (size_t)width);  /* 5 input rows and the sums */
    if (!ring) return -1;
    double taps[TAPS], centre = 0;
    for (int k = 0; k < TAPS; k++) {
        taps[k] = (double)c[k];
        centre -= 2.0 * (double)c[k];
    }
    double *lines[5];
    for (Py_ssize_t virtual = -2; virtual < rows + 2; virtual++) {  /* input row virtual, replicated beyond the ends */
        double *line = ring + ((virtual + 5) % 5) * width;
        Py_ssize_t source = clamp_index(virtual, rows) * columns;
        if (integers) {
            for (Py_ssize_t x = 0; x < columns; x++) line[x + 2] = bounded((double)integers[source + x]);
        } else {
            for (Py_ssize_t x = 0; x < columns; x++) line[x + 2] = round_even(bounded(floats[source + x] * scale + offset));
        }
        line[0] = line[1] = line[2];
        line[columns + 3] = line[columns + 2] = line[columns + 1];
        Py_ssize_t y = virtual - 2;  /* the output row whose last input row this is */
        if (y < 0) continue;
        for (int d = 0; d < 5; d++) lines[d] = ring + ((y - 2 + d + 5) % 5) * width;
        filter_row(lines, columns, taps, centre, ring + 5 * width, sums ? out : out + y * columns);
        if (sums) {  /* out is one row: the squared errors before and after, summed in order */
            const int64_t *original = sums->original + y * columns;
            for (Py_ssize_t x = 0; x < columns; x++) {
                double before = (double)(original[x] - clipped((int64_t)lines[2][x + 2], sums->low, sums->high));
                double after = (double)(original[x] - clipped(out[x], sums->low, sums->high));
                sums->before += before * before;
                sums->after += after * after;
            }
        }
    }
    free(ring);
    return 0;
}

/* decoded_plane(synthesised float64[rows*columns], rows, columns, scale, offset, coefficients int64[12] or None,
   out int64[rows*columns]) -> None: p = round(v * scale + offset), then, with coefficients,
   out = p + floor((sum_k c_k f_k + 2^7) / 2^8) at every sample, in one pass. The filter is computed in float64,
   so its loops have no branches and vectorise: every value is an integer below 2^53 (|p| <= 2^18, |c_k| < 2^12,
   |f_k| <= 2^20, so |sum| < 2^37), so each product and sum is exact, in any order, and so are the division by 2^8
   and the floor; the result is the integer formula's on every machine. */
static PyObject *decoded_plane(PyObject *self, PyObject *args) {
    PyObject *objects[3];
    Py_ssize_t rows, columns;
    double scale, offset;
    if (!PyArg_ParseTuple(args, "OnnddOO", &objects[0], &rows, &columns, &scale, &offset, &objects[1], &objects[2]))
        return NULL;
    if (rows < 1 || columns < 1) { PyErr_SetString(PyExc_ValueError, "empty plane"); return NULL; }
    Buffer buffers[3] = {0};
    PyObject *result = NULL;
    int has_taps = objects[1] != Py_None, failed = 0;
    if (get_buffer(objects[0], &buffers[0], 8, rows * columns, 0, "plane") < 0
        || (has_taps && get_buffer(objects[1], &buffers[1], 8, TAPS, 0, "coefficients") < 0)
        || get_buffer(objects[2], &buffers[2], 8, rows * columns, 1, "out") < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    failed = filter_plane(NULL, buffers[0].view.buf, scale, offset, rows, columns, has_taps ? buffers[1].view.buf : NULL,
                          buffers[2].view.buf, NULL);
    Py_END_ALLOW_THREADS
    if (failed) { PyErr_NoMemory(); goto done; }
    result = Py_NewRef(Py_None);
done:
    release(buffers, 3);
    return result;
}

/* restoration_errors(decoded int64[rows*columns], original int64[rows*columns], rows, columns, coefficients
   int64[12], low, high) -> (float, float): the squared error of decoded and of decoded filtered by the taps against
   original, both clipped to [low, high] first, summed row by row in order, without a filtered plane in memory. */
static PyObject *restoration_errors(PyObject *self, PyObject *args) {
    PyObject *objects[3];
    Py_ssize_t rows, columns;
    ErrorSums sums = {NULL, 0, 0, 0, 0};
    if (!PyArg_ParseTuple(args, "OOnnOLL", &objects[0], &objects[1], &rows, &columns, &objects[2], &sums.low, &sums.high))
        return NULL;
    if (rows < 1 || columns < 1) { PyErr_SetString(PyExc_ValueError, "empty plane"); return NULL; }
    Buffer buffers[3] = {0};
    PyObject *result = NULL;
    int64_t *row = NULL;
    int failed = 0;
    if (get_buffer(objects[0], &buffers[0], 8, rows * columns, 0, "decoded") < 0
        || get_buffer(objects[1], &buffers[1], 8, rows * columns, 0, "original") < 0
        || get_buffer(objects[2], &buffers[2], 8, TAPS, 0, "coefficients") < 0) goto done;
    row = malloc(sizeof(int64_t) * (size_t)columns);
    if (!row) { PyErr_NoMemory(); goto done; }
    Py_BEGIN_ALLOW_THREADS
    sums.original = buffers[1].view.buf;
    failed = filter_plane(buffers[0].view.buf, NULL, 1, 0, rows, columns, buffers[2].view.buf, row, &sums);
    Py_END_ALLOW_THREADS
    if (failed) { PyErr_NoMemory(); goto done; }
    result = Py_BuildValue("(dd)", sums.before, sums.after);
done:
    free(row);
    release(buffers, 3);
    return result;
}

/* restoration_statistics(decoded int64[rows*columns], original int64[...], rows, columns, stride,
   gram float64[144], cross float64[12]) -> float: the normal equations of the least-squares fit of
   original - decoded by the tap features, summed in a fixed order over every stride-th sample of each row
   (stride 1, 2, 4 or 8), starting where every parity of row and column is sampled alike: the wavelet's phases.
   Returns the squared error original - decoded over the same samples. */
static PyObject *restoration_statistics(PyObject *self, PyObject *args) {
    PyObject *objects[4];
    Py_ssize_t rows, columns, stride;
    if (!PyArg_ParseTuple(args, "OOnnnOO", &objects[0], &objects[1], &rows, &columns, &stride, &objects[2], &objects[3]))
        return NULL;
    Buffer buffers[4] = {0};
    PyObject *result = NULL;
    if (rows < 1 || columns < 1 || (stride != 1 && stride != 2 && stride != 4 && stride != 8)) {
        PyErr_SetString(PyExc_ValueError, "empty plane, or a stride other than 1, 2, 4 or 8");
        return NULL;
    }
    if (get_buffer(objects[0], &buffers[0], 8, rows * columns, 0, "decoded") < 0
        || get_buffer(objects[1], &buffers[1], 8, rows * columns, 0, "original") < 0
        || get_buffer(objects[2], &buffers[2], 8, TAPS * TAPS, 1, "gram") < 0
        || get_buffer(objects[3], &buffers[3], 8, TAPS, 1, "cross") < 0) goto done;
    const int64_t *p = buffers[0].view.buf, *original = buffers[1].view.buf;
    double *gram = buffers[2].view.buf, *cross = buffers[3].view.buf, squared = 0;
    Py_BEGIN_ALLOW_THREADS
    memset(gram, 0, TAPS * TAPS * sizeof(double));
    memset(cross, 0, TAPS * sizeof(double));
    int64_t features[TAPS];
    for (Py_ssize_t y = 0; y < rows; y++) {
        /* stride 4 and 8: starts 0, 2, 1, 3 (, 4, 6, 5, 7) in successive rows, so every parity of row and
           column is sampled alike */
        Py_ssize_t start = stride >= 4 ? (((y >> 1) & 1) + 2 * (y & 1) + 4 * ((y >> 2) & 1)) % stride : y % stride;
        for (Py_ssize_t x = start; x < columns; x += stride) {
            tap_features(p, rows, columns, y, x, features);
            double error = (double)(original[y * columns + x] - p[y * columns + x]);
            squared += error * error;
            for (int i = 0; i < TAPS; i++) {
                double fi = (double)features[i];
                cross[i] += fi * error;
                for (int j = i; j < TAPS; j++) gram[i * TAPS + j] += fi * (double)features[j];
            }
        }
    }
    for (int i = 0; i < TAPS; i++) for (int j = 0; j < i; j++) gram[i * TAPS + j] = gram[j * TAPS + i];
    Py_END_ALLOW_THREADS
    result = PyFloat_FromDouble(squared);
done:
    release(buffers, 4);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_plane", encode_plane, METH_VARARGS, "rANS words (bytes, little-endian) of one plane's bands."},
    {"decode_plane", decode_plane, METH_VARARGS, "Decode one plane's bands into the given arrays."},
    {"coding_order", coding_order, METH_VARARGS, "Symbols and lut[cell] of every detail coefficient in coding order."},
    {"analysis_level", analysis_level, METH_VARARGS, "One level of the CDF 9/7 analysis."},
    {"synthesis_level", synthesis_level, METH_VARARGS, "One level of the CDF 9/7 synthesis."},
    {"dequantize", dequantize, METH_VARARGS, "Dequantise detail bands."},
    {"decoded_plane", decoded_plane, METH_VARARGS, "Round a synthesised plane to integers, and filter it."},
    {"restoration_errors", restoration_errors, METH_VARARGS, "Squared errors before and after the restoration filter."},
    {"restoration_statistics", restoration_statistics, METH_VARARGS, "Normal equations of the restoration fit."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_table_coder", "Compiled kernels of model.table_contexts "
                                    "and model.lifting_kernels.", -1, methods};

PyMODINIT_FUNC PyInit__table_coder(void) { return PyModule_Create(&module); }
