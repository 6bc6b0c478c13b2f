/* A decoding step's attention for one new query per hypothesis, and the search's projections
 * (nmt.kernels.native loads this; nmt.decode.incremental and nmt.kernels.packed call it).
 *
 * nmt_self_attention_step: for each hypothesis b and head h, the step's key and value are written into a
 * store that keeps every position's keys and values where they were first written, and softmax(q·Kᵀ/√d_k)·V
 * is computed over the hypothesis's positions, read through the store rows of its ancestors (the
 * hypotheses it continues). Reordering hypotheses thus reorders R × t row numbers, never the keys and
 * values: torch's path copies every layer's whole cache at each reorder and reads it back from memory,
 * through batched products that it runs in a scalar loop at these sizes.
 *
 * nmt_cross_attention_step: the beam's queries of a sentence against its source's keys and values, computed
 * once per sentence; keys transposed (d_k, S) so that a query's scores are a vector over positions, S a
 * multiple of 16 (padding positions carry a -inf bias). Up to four queries of a sentence share each load;
 * blocks of 16 padding positions at a source's end are skipped.
 *
 * nmt_linear: y = x·Wᵀ + b (then ReLU), the weight in panels; see its section below.
 *
 * Each hypothesis's result depends on its own inputs only, computed in one fixed order: a sentence's
 * translation does not depend on the rows beside it, nor on how a step is split across threads.
 *
 * Built with -fopenmp where the compiler has it: the library then needs libgomp.so.1, which resolves to the
 * one torch has already loaded, so its parallel loops run on torch's threads and honour
 * torch.set_num_threads (per calling thread, as nmt translate's workers set it). Without OpenMP the
 * pragmas are ignored and a step runs on the calling thread.
 *
 * The vectors are GCC's vector extension (also clang's): 16 floats, which the compiler maps onto the
 * machine's registers (one AVX-512 register, two AVX ones, four SSE or NEON ones).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The threads a parallel loop called from this thread would use: torch.set_num_threads's count when the
 * library shares torch's OpenMP runtime (nmt.kernels.native checks that), 1 without OpenMP. */
int nmt_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

typedef float v16 __attribute__((vector_size(64), aligned(4)));  /* aligned(4): loads from any float */
typedef int32_t v16i __attribute__((vector_size(64), aligned(4)));

static inline v16 splat(float x) { return (v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

static inline v16 select16(v16i mask, v16 a, v16 b) { return (v16)(((v16i)a & mask) | ((v16i)b & ~mask)); }

/* e^x for x <= 0 (a score minus its row's maximum), -inf giving 0: Cephes' expf polynomial on x - n·ln 2
 * (ln 2 split in two constants, so that the reduction keeps its precision), scaled by 2^n. Relative error
 * about 1e-7; below -87 (weights under 1e-38 of the row's largest) it is 0. */
static inline v16 exp16(v16 x) {
    v16i under = x < splat(-87.0f);
    x = select16(under, splat(-87.0f), x);
    v16 y = x * splat(1.44269504088896341f) + splat(0.5f);
    v16 t = __builtin_convertvector(__builtin_convertvector(y, v16i), v16);
    v16 n = t + __builtin_convertvector((v16i)(t > y), v16);  /* floor: truncation, less 1 where it rounded up */
    v16 r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
    v16 p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
    return (v16)((v16i)(p * (v16)bits) & ~under);
}

/* Scores w[0..T) → softmax weights in place (and -inf up to T rounded up to 16). */
static void softmax_weights(v16 *w, int64_t T) {
    int64_t blocks = (T + 15) / 16;
    float *ws = (float *)w;
    for (int64_t j = T; j < 16 * blocks; j++) ws[j] = -INFINITY;
    v16 max = splat(-INFINITY);
    for (int64_t b = 0; b < blocks; b++) max = select16(w[b] > max, w[b], max);
    float m = max[0];
    for (int k = 1; k < 16; k++) m = max[k] > m ? max[k] : m;
    v16 sum = splat(0.0f);
    for (int64_t b = 0; b < blocks; b++) {
        w[b] = exp16(w[b] - m);
        sum += w[b];
    }
    float total = 0.0f;
    for (int k = 0; k < 16; k++) total += sum[k];
    v16 inv = splat(1.0f / total);
    for (int64_t b = 0; b < blocks; b++) w[b] *= inv;
}

/* out_i = Σ_j w_i[j]·V[j] for nq ≤ QG queries' weights w_i (rows of `stride` vectors), V (T, dv) rows dv
 * apart, out_i rows out_stride apart. Each output is one sum over j in order, whatever nq: the queries share
 * the loads of V, and their sums are independent chains for the core's pipelines. */
#define QG 4
static inline __attribute__((always_inline)) void values_group(int nq, const v16 *w, int64_t stride, int64_t T, const float *V,
                                                               int64_t dv, float *out, int64_t out_stride) {
    if (dv % 16 == 0 && dv <= 128) {
        v16 acc[QG][8];
        int64_t chunks = dv / 16;
        for (int i = 0; i < nq; i++)
            for (int64_t c = 0; c < chunks; c++) acc[i][c] = splat(0.0f);
        for (int64_t j = 0; j < T; j++) {
            const v16 *v = (const v16 *)(V + j * dv);
            for (int i = 0; i < nq; i++) {
                float weight = ((const float *)(w + i * stride))[j];
                for (int64_t c = 0; c < chunks; c++) acc[i][c] += weight * v[c];
            }
        }
        for (int i = 0; i < nq; i++)
            for (int64_t c = 0; c < chunks; c++) *(v16 *)(out + i * out_stride + 16 * c) = acc[i][c];
        return;
    }
    for (int i = 0; i < nq; i++) {
        const float *ws = (const float *)(w + i * stride);
        float *o = out + i * out_stride;
        for (int64_t d = 0; d < dv; d++) o[d] = 0.0f;
        for (int64_t j = 0; j < T; j++)
            for (int64_t d = 0; d < dv; d++) o[d] += ws[j] * V[j * dv + d];
    }
}

static void values(int64_t nq, const v16 *w, int64_t stride, int64_t T, const float *V, int64_t dv, float *out, int64_t out_stride) {
    switch (nq) { /* each case inlines values_group() with a constant query count */
    case 1: values_group(1, w, stride, T, V, dv, out, out_stride); break;
    case 2: values_group(2, w, stride, T, V, dv, out, out_stride); break;
    case 3: values_group(3, w, stride, T, V, dv, out, out_stride); break;
    default: values_group(4, w, stride, T, V, dv, out, out_stride); break;
    }
}

/* Whether any of x's 16 values is above -inf (a position that may be attended). */
static inline int any_finite(v16 x) {
    v16i finite = x > splat(-INFINITY);
    int any = 0;
    for (int k = 0; k < 16; k++) any |= finite[k];
    return any != 0;
}

static inline float dot(const float *a, const float *b, int64_t n) {
    if (n % 16 == 0) {
        v16 acc = splat(0.0f);
        for (int64_t c = 0; c < n; c += 16) acc += *(const v16 *)(a + c) * *(const v16 *)(b + c);
        float s = 0.0f;
        for (int k = 0; k < 16; k++) s += acc[k];
        return s;
    }
    float s = 0.0f;
    for (int64_t d = 0; d < n; d++) s += a[d] * b[d];
    return s;
}

/* Scores for up to this many positions live on the stack; more are allocated. */
#define LOCAL_BLOCKS 256

/* Below this much work (positions × head widths over a step's hypotheses and heads) a step runs on the
 * calling thread alone: waking another costs some 10-20 µs. */
#define SPLIT_WORK (1 << 18)

/* A step at position t that reads each hypothesis's earlier positions where they were first written instead of
 * from a reordered copy:
 *   qkv      (R, H, 2·dk + dv): each head's query, key and value side by side; rows qkv_stride apart
 *   store    n_chunks addresses of (2^shift, H·(dk + dv)) contiguous float blocks: the store, every key and
 *            value written so far, one row per hypothesis and position, each head's key then value; row i
 *            is row i mod 2^shift of chunk i >> shift; rows [0, top) written
 *   ancestors (R, t) int64 contiguous: the store's row of each hypothesis's positions 0..t-1
 *   out      (R, H·dv): written, each head's attention output; rows out_stride apart
 * Writes each hypothesis's key and value at position t into store row top + b. Returns 0; 1 when memory
 * for the scores could not be had; 2, having written nothing, when an ancestor row is not below top or the
 * store has no room for R more rows. */
int nmt_self_attention_step(const float *qkv, int64_t qkv_stride, const int64_t *store, int64_t n_chunks, int64_t shift,
                            int64_t top, const int64_t *ancestors, float *out, int64_t out_stride,
                            int64_t R, int64_t H, int64_t t, int64_t dk, int64_t dv, float scale) {
    if (top < 0 || R < 0 || t < 0 || shift < 0 || shift > 40 || n_chunks < 0 || top > (n_chunks << shift) ||
        R > (n_chunks << shift) - top)
        return 2;
    for (int64_t i = 0; i < R * t; i++)
        if (ancestors[i] < 0 || ancestors[i] >= top) return 2;
    int64_t width = H * (dk + dv), mask = ((int64_t)1 << shift) - 1;
#define STORE_ROW(i) ((float *)(intptr_t)store[(i) >> shift] + ((i) & mask) * width)
    int failed = 0;
    int64_t blocks = (t + 1 + 15) / 16;
#pragma omp parallel if (R * H * (t + 1) * (dk + dv) >= SPLIT_WORK) reduction(| : failed)
    {
        v16 local[LOCAL_BLOCKS];
        v16 *w = blocks <= LOCAL_BLOCKS ? local : (v16 *)malloc(sizeof(v16) * (size_t)blocks);
        failed = !w;
        float *ws = (float *)w;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < R; b++) {
            if (!w) continue;
            const int64_t *from = ancestors + b * t;
            float *own = STORE_ROW(top + b);
            for (int64_t h = 0; h < H; h++) {
                const float *q = qkv + b * qkv_stride + h * (2 * dk + dv);
                memcpy(own + h * (dk + dv), q + dk, sizeof(float) * (size_t)(dk + dv));
            }
            for (int64_t h = 0; h < H; h++) {
                const float *q = qkv + b * qkv_stride + h * (2 * dk + dv);
                int64_t head = h * (dk + dv);
                for (int64_t j = 0; j < t; j++) ws[j] = dot(q, STORE_ROW(from[j]) + head, dk) * scale;
                ws[t] = dot(q, own + head, dk) * scale;
                softmax_weights(w, t + 1);
                float *o = out + b * out_stride + h * dv;
                if (dv % 16 == 0 && dv <= 128) {
                    v16 acc[8];
                    int64_t chunks = dv / 16;
                    for (int64_t c = 0; c < chunks; c++) acc[c] = splat(0.0f);
                    for (int64_t j = 0; j <= t; j++) {
                        const v16 *v = (const v16 *)((j < t ? STORE_ROW(from[j]) : own) + head + dk);
                        for (int64_t c = 0; c < chunks; c++) acc[c] += ws[j] * v[c];
                    }
                    for (int64_t c = 0; c < chunks; c++) *(v16 *)(o + 16 * c) = acc[c];
                } else {
                    for (int64_t d = 0; d < dv; d++) o[d] = 0.0f;
                    for (int64_t j = 0; j <= t; j++) {
                        const float *v = (j < t ? STORE_ROW(from[j]) : own) + head + dk;
                        for (int64_t d = 0; d < dv; d++) o[d] += ws[j] * v[d];
                    }
                }
            }
        }
        if (w && w != local) free(w);
    }
#undef STORE_ROW
    return failed;
}

/* G = N·H sentence-head blocks (g = sentence · H + head), each with `beam` queries:
 *   q        (N·beam, H·dk): the queries, rows q_stride apart
 *   kt       (N·H, dk, S) contiguous: the keys, transposed; S a multiple of 16
 *   v        (N·H, S, dv) contiguous
 *   bias     (N·H, S) contiguous: 0 for a source token, -inf for padding
 *   out      (N·beam, H·dv): written, rows out_stride apart
 * Blocks are shared among the calling thread's OpenMP threads. Returns 0, or 1 when memory for the
 * scores could not be had. */
int nmt_cross_attention_step(const float *q, int64_t q_stride, const float *kt, const float *v, const float *bias,
                             float *out, int64_t out_stride, int64_t G, int64_t H, int64_t beam,
                             int64_t S, int64_t dk, int64_t dv, float scale) {
    int failed = 0;
    int64_t blocks = S / 16;
#pragma omp parallel if (G * beam * S * (dk + dv) >= SPLIT_WORK) reduction(| : failed)
    {
        v16 local[QG * LOCAL_BLOCKS];
        v16 *w = blocks <= LOCAL_BLOCKS ? local : (v16 *)malloc(sizeof(v16) * (size_t)(QG * blocks));
        failed = !w;
#pragma omp for schedule(static)
        for (int64_t g = 0; g < G; g++) {
            if (!w) continue;
            int64_t n = g / H, h = g % H;
            const float *KT = kt + g * dk * S, *V = v + g * S * dv;
            const v16 *B = (const v16 *)(bias + g * S);
            /* Blocks of padding only (a shorter source in a batch of longer ones) weigh exactly 0: skipping
             * them changes no bit of the result, and a sentence costs its own length, not its batch's. */
            int64_t used = blocks;
            while (used > 1 && !any_finite(B[used - 1])) used--;
            for (int64_t i0 = 0; i0 < beam; i0 += QG) { /* up to QG queries share each load of the keys and values */
                int64_t nq = beam - i0 < QG ? beam - i0 : QG;
                const float *qi[QG];
                for (int64_t i = 0; i < nq; i++) qi[i] = q + (n * beam + i0 + i) * q_stride + h * dk;
                for (int64_t b = 0; b < used; b++) {
                    v16 acc[QG];
                    for (int64_t i = 0; i < nq; i++) acc[i] = splat(0.0f);
                    for (int64_t d = 0; d < dk; d++) {
                        v16 key = *(const v16 *)(KT + d * S + 16 * b);
                        for (int64_t i = 0; i < nq; i++) acc[i] += qi[i][d] * key;
                    }
                    for (int64_t i = 0; i < nq; i++) w[i * blocks + b] = acc[i] * scale + B[b];
                }
                for (int64_t i = 0; i < nq; i++) softmax_weights(w + i * blocks, 16 * used);
                values(nq, w, blocks, 16 * used, V, dv, out + (n * beam + i0) * out_stride + h * dv, out_stride);
            }
        }
        if (w && w != local) free(w);
    }
    return failed;
}

/* ------------------------------------------------------------------------------------------------------
 * A step's projections: y = x·Wᵀ + b (then ReLU), for the few to few hundred rows of a decoding step.
 *
 * oneDNN's and MKL's products spend 5-13 µs a call preparing before they multiply, more than a 4-row
 * product of a 128 × 128 weight takes to compute, and a step makes a dozen of them. This product starts at
 * once: the weight is stored in panels of NMT_PANEL columns, (panels, K, NMT_PANEL), so that each step of
 * the inner loop reads one row of a panel as vectors and multiplies it by one input value per row of a
 * block of MR rows, accumulating in registers (the BLIS scheme without its packing of the input).
 *
 * Every output is the same multiply-add chain over k = 0..K-1 from 0 (fused where the CPU has FMA: each
 * block's loop compiles to the same instructions for every row), then the bias, then the ReLU,
 * whatever block, tile or thread computes it: a row's result does not depend on the other rows. */

#if defined(__AVX512F__)
#define NMT_PANEL 64 /* 4 vectors × 6 rows = 24 accumulators in the 32 AVX-512 registers */
#else
#define NMT_PANEL 16 /* 1 vector (two AVX registers) × 6 rows in 16 registers */
#endif
#define PANEL_VECTORS (NMT_PANEL / 16)
#define MR 6
/* Rows of a tile: MC rows of x (MC·K floats) stay in the core's cache while every panel passes over them. */
#define TILE_FLOATS (1 << 17)
/* Below this many multiply-adds a product runs on the calling thread alone. */
#define SPLIT_MACS (1 << 21)

/* The width of a panel, which nmt.kernels.native packs weights for. */
int nmt_linear_panel(void) { return NMT_PANEL; }

static inline v16 fma16(v16 acc, float a, v16 w) { return acc + splat(a) * w; }

/* Rows [0, mr) of a block times one panel: x rows xs apart, w the panel (K, NMT_PANEL), y rows ys apart
 * receiving cols (≤ NMT_PANEL) columns. mr is a constant in each inlined copy, so acc lives in registers. */
static inline __attribute__((always_inline)) void block(int mr, const float *x, int64_t xs, const float *w, int64_t K,
                                                        const float *bias, int relu, float *y, int64_t ys, int64_t cols) {
    v16 acc[MR][PANEL_VECTORS];
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < PANEL_VECTORS; c++) acc[r][c] = splat(0.0f);
    for (int64_t k = 0; k < K; k++) {
        const v16 *wk = (const v16 *)(w + k * NMT_PANEL);
        v16 wv[PANEL_VECTORS];
        for (int c = 0; c < PANEL_VECTORS; c++) wv[c] = wk[c];
        for (int r = 0; r < mr; r++)
            for (int c = 0; c < PANEL_VECTORS; c++) acc[r][c] = fma16(acc[r][c], x[r * xs + k], wv[c]);
    }
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < PANEL_VECTORS; c++) {
            v16 v = acc[r][c] + *(const v16 *)(bias + 16 * c);
            if (relu) v = (v16)((v16i)v & ~(v < splat(0.0f))); /* NaN stays NaN, as torch's relu keeps it */
            float *out = y + r * ys + 16 * c;
            if (16 * (c + 1) <= cols) *(v16 *)out = v;
            else
                for (int64_t j = 0; j < cols - 16 * c; j++) out[j] = v[j];
        }
}

static void block_rows(int64_t mr, const float *x, int64_t xs, const float *w, int64_t K, const float *bias, int relu,
                       float *y, int64_t ys, int64_t cols) {
    switch (mr) { /* each case inlines block() with a constant row count */
    case 1: block(1, x, xs, w, K, bias, relu, y, ys, cols); break;
    case 2: block(2, x, xs, w, K, bias, relu, y, ys, cols); break;
    case 3: block(3, x, xs, w, K, bias, relu, y, ys, cols); break;
    case 4: block(4, x, xs, w, K, bias, relu, y, ys, cols); break;
    case 5: block(5, x, xs, w, K, bias, relu, y, ys, cols); break;
    default: block(6, x, xs, w, K, bias, relu, y, ys, cols); break;
    }
}

/* y (M, N), rows ys apart = x (M, K), rows xs apart, times the weight packed as (ceil(N / NMT_PANEL), K,
 * NMT_PANEL) (columns past N are 0), plus bias (N rounded up to NMT_PANEL, padded with 0), then ReLU if relu.
 * Tiles of rows × panels are shared among the calling thread's OpenMP threads when the product is large. */
void nmt_linear(const float *x, int64_t xs, int64_t M, const float *wp, const float *bias, int64_t K, int64_t N, int relu,
                float *y, int64_t ys) {
    int64_t panels = (N + NMT_PANEL - 1) / NMT_PANEL;
    /* As few row chunks as keep a chunk within TILE_FLOATS, of equal size (in blocks of MR rows), so that
     * threads get equal tiles. */
    int64_t most = TILE_FLOATS / (K > 0 ? K : 1);
    int64_t chunks = (M + most - 1) / (most > MR ? most : MR);
    if (chunks < 1) chunks = 1;
    int64_t mc = ((M + chunks - 1) / chunks + MR - 1) / MR * MR;
    chunks = (M + mc - 1) / mc;
#pragma omp parallel for collapse(2) schedule(static) if (M * N * K >= SPLIT_MACS && chunks * panels > 1)
    for (int64_t c = 0; c < chunks; c++)
        for (int64_t p = 0; p < panels; p++) {
            const float *w = wp + p * K * NMT_PANEL;
            int64_t cols = N - NMT_PANEL * p < NMT_PANEL ? N - NMT_PANEL * p : NMT_PANEL;
            int64_t end = (c + 1) * mc < M ? (c + 1) * mc : M;
            for (int64_t i = c * mc; i < end; i += MR)
                block_rows(end - i < MR ? end - i : MR, x + i * xs, xs, w, K, bias + NMT_PANEL * p, relu,
                           y + i * ys + NMT_PANEL * p, ys, cols);
        }
}
