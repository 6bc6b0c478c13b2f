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
 * vectors of padding positions at a source's end are skipped.
 *
 * nmt_linear: y = x·Wᵀ + b (then ReLU), the weight in panels; see its section below.
 *
 * nmt_output_top_k: the output projection's logits turned into what the beam search takes of them, each
 * row's best log-probabilities, while each tile of logits is in registers; see its section at the end.
 *
 * Each hypothesis's result depends on its own inputs only, computed in one fixed order: a sentence's
 * translation does not depend on the rows beside it, nor on how a step is split across threads.
 *
 * Built with -fopenmp where the compiler has it: the library then needs libgomp.so.1, which resolves to the
 * one torch has already loaded, so its parallel loops run on torch's threads and honour
 * torch.set_num_threads (per calling thread, as nmt translate's workers set it). Without OpenMP the
 * pragmas are ignored and a step runs on the calling thread.
 *
 * The vectors are GCC's vector extension (also clang's) of the machine's own width, VW floats: one AVX-512
 * register (16), one AVX register (8), one SSE or NEON register (4). Wider vectors than the machine has are
 * split by the compiler into code that ran 5-25x slower (docs/performance.md).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else
#define VW 4
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

/* The floats of a vector, which nmt.kernels.native reports. */
int nmt_vector_width(void) { return VW; }

typedef float vf __attribute__((vector_size(4 * VW), aligned(4)));  /* aligned(4): loads from any float */
typedef int32_t vi __attribute__((vector_size(4 * VW), aligned(4)));

/* x in every lane (an initializer, which compiles to one broadcast: 0 + x would be an addition first, as
 * -0.0 + 0 is not -0.0). */
static inline vf splat(float x) {
#if VW == 16
    return (vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
#elif VW == 8
    return (vf){x, x, x, x, x, x, x, x};
#else
    return (vf){x, x, x, x};
#endif
}

static inline vf select_v(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* Whether any of x's values is above t (NaN is not). */
static inline int any_above(vf x, float t) {
    vi above = x > splat(t);
    for (int width = VW / 2; width >= 1; width /= 2) { /* halving ORs, which compile to a few shuffles */
        vi folded = above;
        for (int l = 0; l < width; l++) folded[l] |= above[l + width];
        above = folded;
    }
    return above[0] != 0;
}

/* The largest of x's values, and their sum, lane by lane in order. */
static inline float hmax(vf x) {
    float m = x[0];
    for (int l = 1; l < VW; l++) m = x[l] > m ? x[l] : m;
    return m;
}

static inline float hsum(vf x) {
    float s = 0.0f;
    for (int l = 0; l < VW; l++) s += x[l];
    return s;
}

/* e^x for x <= 0 (a score minus its row's maximum), -inf giving 0: Cephes' expf polynomial on x - n·ln 2
 * (ln 2 split in two constants, so that the reduction keeps its precision), scaled by 2^n. Relative error
 * about 1e-7; below -87 (weights under 1e-38 of the row's largest) it is 0. */
static inline vf exp_v(vf x) {
    vi under = x < splat(-87.0f);
    x = select_v(under, splat(-87.0f), x);
    /* n = x / ln 2 rounded to the nearest integer: adding 1.5·2^23 leaves no bits below the units, and t's
     * low bits then hold n (two operations, where a floor through conversions takes five). */
    vf t = x * splat(1.44269504088896341f) + splat(12582912.0f);
    vf n = t - splat(12582912.0f);
    vf r = x - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
    vf p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    vi bits = ((vi)t - (vi)splat(12582912.0f) + 127) << 23;
    return (vf)((vi)(p * (vf)bits) & ~under);
}

/* Scores w[0..T) → softmax weights in place (and -inf up to T rounded up to VW). */
static void softmax_weights(vf *w, int64_t T) {
    int64_t blocks = (T + VW - 1) / VW;
    float *ws = (float *)w;
    for (int64_t j = T; j < VW * blocks; j++) ws[j] = -INFINITY;
    vf max = splat(-INFINITY);
    for (int64_t b = 0; b < blocks; b++) max = select_v(w[b] > max, w[b], max);
    float m = hmax(max);
    vf sum = splat(0.0f);
    for (int64_t b = 0; b < blocks; b++) {
        w[b] = exp_v(w[b] - m);
        sum += w[b];
    }
    vf inv = splat(1.0f / hsum(sum));
    for (int64_t b = 0; b < blocks; b++) w[b] *= inv;
}

/* Head widths up to this many floats keep a query's output sum in vectors (acc arrays on the stack). */
#define WIDEST_HEAD 128
#define HEAD_VECTORS (WIDEST_HEAD / VW)

/* out_i = Σ_j w_i[j]·V[j] for nq ≤ QG queries' weights w_i (rows of `stride` vectors), V (T, dv) rows dv
 * apart, out_i rows out_stride apart. Each output is one sum over j in order, whatever nq: the queries share
 * the loads of V, and their sums are independent chains for the core's pipelines. */
#define QG 4
static inline __attribute__((always_inline)) void values_group(int nq, const vf *w, int64_t stride, int64_t T, const float *V,
                                                               int64_t dv, float *out, int64_t out_stride) {
    if (dv % VW == 0 && dv <= WIDEST_HEAD) {
        vf acc[QG][HEAD_VECTORS];
        int64_t chunks = dv / VW;
        for (int i = 0; i < nq; i++)
            for (int64_t c = 0; c < chunks; c++) acc[i][c] = splat(0.0f);
        for (int64_t j = 0; j < T; j++) {
            const vf *v = (const vf *)(V + j * dv);
            for (int i = 0; i < nq; i++) {
                float weight = ((const float *)(w + i * stride))[j];
                for (int64_t c = 0; c < chunks; c++) acc[i][c] += weight * v[c];
            }
        }
        for (int i = 0; i < nq; i++)
            for (int64_t c = 0; c < chunks; c++) *(vf *)(out + i * out_stride + VW * c) = acc[i][c];
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

static void values(int64_t nq, const vf *w, int64_t stride, int64_t T, const float *V, int64_t dv, float *out, int64_t out_stride) {
    switch (nq) { /* each case inlines values_group() with a constant query count */
    case 1: values_group(1, w, stride, T, V, dv, out, out_stride); break;
    case 2: values_group(2, w, stride, T, V, dv, out, out_stride); break;
    case 3: values_group(3, w, stride, T, V, dv, out, out_stride); break;
    default: values_group(4, w, stride, T, V, dv, out, out_stride); break;
    }
}

static inline float dot(const float *a, const float *b, int64_t n) {
    if (n % VW == 0) {
        vf acc = splat(0.0f);
        for (int64_t c = 0; c < n; c += VW) acc += *(const vf *)(a + c) * *(const vf *)(b + c);
        return hsum(acc);
    }
    float s = 0.0f;
    for (int64_t d = 0; d < n; d++) s += a[d] * b[d];
    return s;
}

/* Scores for up to 4,096 positions live on the stack (LOCAL_BLOCKS vectors); more are allocated. */
#define LOCAL_BLOCKS (4096 / VW)

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
    int64_t blocks = (t + 1 + VW - 1) / VW;
#pragma omp parallel if (R * H * (t + 1) * (dk + dv) >= SPLIT_WORK) reduction(| : failed)
    {
        vf local[LOCAL_BLOCKS];
        vf *w = blocks <= LOCAL_BLOCKS ? local : (vf *)malloc(sizeof(vf) * (size_t)blocks);
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
                if (dv % VW == 0 && dv <= WIDEST_HEAD) {
                    vf acc[HEAD_VECTORS];
                    int64_t chunks = dv / VW;
                    for (int64_t c = 0; c < chunks; c++) acc[c] = splat(0.0f);
                    for (int64_t j = 0; j <= t; j++) {
                        const vf *v = (const vf *)((j < t ? STORE_ROW(from[j]) : own) + head + dk);
                        for (int64_t c = 0; c < chunks; c++) acc[c] += ws[j] * v[c];
                    }
                    for (int64_t c = 0; c < chunks; c++) *(vf *)(o + VW * c) = acc[c];
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
    int64_t blocks = S / VW;
#pragma omp parallel if (G * beam * S * (dk + dv) >= SPLIT_WORK) reduction(| : failed)
    {
        vf local[QG * LOCAL_BLOCKS];
        vf *w = blocks <= LOCAL_BLOCKS ? local : (vf *)malloc(sizeof(vf) * (size_t)(QG * blocks));
        failed = !w;
#pragma omp for schedule(static)
        for (int64_t g = 0; g < G; g++) {
            if (!w) continue;
            int64_t n = g / H, h = g % H;
            const float *KT = kt + g * dk * S, *V = v + g * S * dv;
            const vf *B = (const vf *)(bias + g * S);
            /* Blocks of padding only (a shorter source in a batch of longer ones) weigh exactly 0: skipping
             * them changes no bit of the result, and a sentence costs its own length, not its batch's. */
            int64_t used = blocks;
            while (used > 1 && !any_above(B[used - 1], -INFINITY)) used--; /* no position that may be attended */
            for (int64_t i0 = 0; i0 < beam; i0 += QG) { /* up to QG queries share each load of the keys and values */
                int64_t nq = beam - i0 < QG ? beam - i0 : QG;
                const float *qi[QG];
                for (int64_t i = 0; i < nq; i++) qi[i] = q + (n * beam + i0 + i) * q_stride + h * dk;
                for (int64_t b = 0; b < used; b++) {
                    vf acc[QG];
                    for (int64_t i = 0; i < nq; i++) acc[i] = splat(0.0f);
                    for (int64_t d = 0; d < dk; d++) {
                        vf key = *(const vf *)(KT + d * S + VW * b);
                        for (int64_t i = 0; i < nq; i++) acc[i] += qi[i][d] * key;
                    }
                    for (int64_t i = 0; i < nq; i++) w[i * blocks + b] = acc[i] * scale + B[b];
                }
                for (int64_t i = 0; i < nq; i++) softmax_weights(w + i * blocks, VW * used);
                values(nq, w, blocks, VW * used, V, dv, out + (n * beam + i0) * out_stride + h * dv, out_stride);
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

/* A block's MR × PANEL_VECTORS accumulators, PANEL_VECTORS weight vectors and one input value in registers. */
#if defined(__AVX512F__) || defined(__aarch64__)
#define PANEL_VECTORS 4 /* 24 accumulators of the 32 registers: 64 columns on AVX-512, 16 on NEON */
#else
#define PANEL_VECTORS 2 /* 12 accumulators of the 16 AVX or SSE registers: 16 or 8 columns */
#endif
#define NMT_PANEL (PANEL_VECTORS * VW)
#define MR 6
/* Rows of a tile: MC rows of x (MC·K floats) stay in the core's cache while every panel passes over them. */
#define TILE_FLOATS (1 << 17)
/* Below this many multiply-adds a product runs on the calling thread alone. */
#define SPLIT_MACS (1 << 21)

/* The width of a panel, which nmt.kernels.native packs weights for. */
int nmt_linear_panel(void) { return NMT_PANEL; }

static inline vf fma_v(vf acc, float a, vf w) { return acc + splat(a) * w; }

/* Rows [0, mr) of a block times one panel: x rows xs apart, w the panel (K, NMT_PANEL), y rows ys apart
 * receiving cols (≤ NMT_PANEL) columns. mr is a constant in each inlined copy, so acc lives in registers. */
static inline __attribute__((always_inline)) void block(int mr, const float *x, int64_t xs, const float *w, int64_t K,
                                                        const float *bias, int relu, float *y, int64_t ys, int64_t cols) {
    vf acc[MR][PANEL_VECTORS];
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < PANEL_VECTORS; c++) acc[r][c] = splat(0.0f);
    for (int64_t k = 0; k < K; k++) {
        const vf *wk = (const vf *)(w + k * NMT_PANEL);
        vf wv[PANEL_VECTORS];
        for (int c = 0; c < PANEL_VECTORS; c++) wv[c] = wk[c];
        for (int r = 0; r < mr; r++)
            for (int c = 0; c < PANEL_VECTORS; c++) acc[r][c] = fma_v(acc[r][c], x[r * xs + k], wv[c]);
    }
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < PANEL_VECTORS; c++) {
            vf v = acc[r][c] + *(const vf *)(bias + VW * c);
            if (relu) v = (vf)((vi)v & ~(v < splat(0.0f))); /* NaN stays NaN, as torch's relu keeps it */
            float *out = y + r * ys + VW * c;
            if (VW * (c + 1) <= cols) *(vf *)out = v;
            else
                for (int64_t j = 0; j < cols - VW * c; j++) out[j] = v[j];
        }
}

/* Not inlined: one copy of the blocks, called by nmt_linear and nmt_output_top_k alike (so that both compute a
 * logit with the same instructions), and compiled alone, where GCC keeps all accumulators in registers (inlined
 * into nmt_output_top_k's loop, it spilled one on AVX2 and ran at half speed). */
static __attribute__((noinline)) void block_rows(int64_t mr, const float *x, int64_t xs, const float *w, int64_t K, const float *bias, int relu,
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

/* ------------------------------------------------------------------------------------------------------
 * The search's candidates: each row's best few log-probabilities, from the output projection. */

/* v, at column c, into a row's best k (largest first) after the entries at least as large, so that of equal
 * values the one offered first stays first; returns the new k-th largest. */
static inline float insert(float *top, int64_t *col, int64_t k, float v, int64_t c) {
    int64_t at = k - 1;
    while (at > 0 && top[at - 1] < v) {
        top[at] = top[at - 1];
        col[at] = col[at - 1];
        at--;
    }
    top[at] = v;
    col[at] = c;
    return top[k - 1];
}

/* A row's best k entries so far (top, col: largest first, lower columns first among equals) and threshold,
 * the k-th largest: entries c0 + [0, n) of t offered, banned columns skipped. */
static inline void offer(const float *t, int64_t n, int64_t c0, float *top, int64_t *col, int64_t k, float *threshold,
                         const int64_t *banned, int64_t n_banned) {
    for (int64_t c = 0; c < n; c++) {
        if (c % VW == 0 && c + VW <= n && !any_above(*(const vf *)(t + c), *threshold)) {
            c += VW - 1; /* a vector with none above */
            continue;
        }
        float v = t[c];
        if (!(v > *threshold)) continue;
        int skip = 0;
        for (int64_t b = 0; b < n_banned; b++) skip |= banned[b] == c0 + c;
        if (skip) continue;
        *threshold = insert(top, col, k, v, c0 + c);
    }
}

/* Columns of a group: each row's state is kept per group of this many columns (a multiple of every panel
 * width), and groups are merged in order at the end, so that a few rows of a large vocabulary can still be
 * shared among threads by columns while a row's result depends on N alone, never on the threads. */
#define GROUP_COLUMNS 4096

/* The output projection and the search's use of it in one pass, the logits never written out: for x (M, K),
 * rows xs apart, and the weight and bias packed as nmt_linear reads them (N the vocabulary), each row's
 * log-probabilities log_softmax(x·Wᵀ + b) are known through its maximum logit and the sum of its exponentials
 * (accumulated panel by panel, rescaled when the maximum grows), and the search needs only each row's k best
 * (excluding the banned columns, which still count in the sum) and the one at column `also` (EOS, which a
 * hypothesis at its length limit must take). Writes values (M, k) with columns (M, k) (largest first, of
 * equal ones the lower column first; a row with fewer than k finite ones ends with -inf at columns 0, 1, ...)
 * and also_values (M,). Each row's logits are computed by nmt_linear's blocks, met in the same order, and
 * merged over column groups in the same order, whatever the other rows and threads: a row's results depend
 * on that row alone.
 *
 * The (M, N) logits of a step are megabytes that a separate softmax and top-k would read back from memory
 * three times; here each tile of them is used while it is in registers and the first level of cache.
 * Returns 0; 1 when memory for the rows' state could not be had; 2 (nothing written) when k is not 1-64. */
int nmt_output_top_k(const float *x, int64_t xs, int64_t M, const float *wp, const float *bias, int64_t K, int64_t N, int64_t k,
                     const int64_t *banned, int64_t n_banned, int64_t also, float *values, int64_t *columns, float *also_values) {
    if (k < 1 || k > 64) return 2;
    if (M <= 0) return 0;
    int64_t G = (N + GROUP_COLUMNS - 1) / GROUP_COLUMNS, group_panels = GROUP_COLUMNS / NMT_PANEL;
    int64_t panels = (N + NMT_PANEL - 1) / NMT_PANEL;
    /* Row chunks × column groups are the threads' tiles: chunks within TILE_FLOATS of x, and as many tiles as
     * threads when the product is large. */
    int64_t most = TILE_FLOATS / (K > 0 ? K : 1);
    int64_t chunks = (M + most - 1) / (most > MR ? most : MR);
    int64_t want = M * N * K >= SPLIT_MACS ? nmt_threads() : 1;
    if (chunks * G < want) chunks = (want + G - 1) / G;
    if (chunks > (M + MR - 1) / MR) chunks = (M + MR - 1) / MR;
    if (chunks < 1) chunks = 1;
    int64_t mc = ((M + chunks - 1) / chunks + MR - 1) / MR * MR;
    chunks = (M + mc - 1) / mc;
    /* Each (row, group)'s state: sums of exponentials (a vector), maximum, threshold, best k and their columns. */
    vf *sums = (vf *)malloc(sizeof(vf) * (size_t)(M * G));
    float *state = (float *)malloc(sizeof(float) * (size_t)(M * G * (2 + k) + M));
    int64_t *cols_of = (int64_t *)malloc(sizeof(int64_t) * (size_t)(M * G * k));
    if (!sums || !state || !cols_of) {
        free(sums);
        free(state);
        free(cols_of);
        return 1;
    }
    float *maxima = state, *thresholds = state + M * G, *tops = state + 2 * M * G, *also_logits = state + M * G * (2 + k);
    for (int64_t i = 0; i < M * G; i++) {
        sums[i] = splat(0.0f);
        maxima[i] = thresholds[i] = -INFINITY;
        for (int64_t a = 0; a < k; a++) {
            tops[i * k + a] = -INFINITY;
            cols_of[i * k + a] = a;
        }
    }
    for (int64_t i = 0; i < M; i++) also_logits[i] = -INFINITY;
#pragma omp parallel for collapse(2) schedule(static) if (chunks * G > 1 && want > 1)
    for (int64_t c = 0; c < chunks; c++)
        for (int64_t g = 0; g < G; g++) {
            int64_t start = c * mc, end = (c + 1) * mc < M ? (c + 1) * mc : M;
            int64_t last = (g + 1) * group_panels < panels ? (g + 1) * group_panels : panels;
            for (int64_t p = g * group_panels; p < last; p++) {
                const float *w = wp + p * K * NMT_PANEL;
                int64_t cols = N - NMT_PANEL * p < NMT_PANEL ? N - NMT_PANEL * p : NMT_PANEL;
                for (int64_t i = start; i < end; i += MR) {
                    int64_t mr = end - i < MR ? end - i : MR;
                    vf tile[MR][PANEL_VECTORS];
                    block_rows(mr, x + i * xs, xs, w, K, bias + NMT_PANEL * p, 0, (float *)tile, NMT_PANEL, cols);
                    for (int64_t r = 0; r < mr; r++) {
                        float *t = (float *)tile[r];
                        for (int64_t j = cols; j < NMT_PANEL; j++) t[j] = -INFINITY; /* past the vocabulary: weight 0 */
                        int64_t at = (i + r) * G + g;
                        vf mv = tile[r][0];
                        for (int v = 1; v < PANEL_VECTORS; v++) mv = select_v(tile[r][v] > mv, tile[r][v], mv);
                        float m = hmax(mv);
                        if (m > maxima[at]) { /* the sum so far, rescaled to the new maximum */
                            sums[at] *= exp_v(splat(maxima[at] - m));
                            maxima[at] = m;
                        }
                        for (int v = 0; v < PANEL_VECTORS; v++) sums[at] += exp_v(tile[r][v] - maxima[at]);
                        if (also >= NMT_PANEL * p && also < NMT_PANEL * p + cols) also_logits[i + r] = t[also - NMT_PANEL * p];
                        offer(t, cols, NMT_PANEL * p, tops + at * k, cols_of + at * k, k, thresholds + at, banned, n_banned);
                    }
                }
            }
        }
    /* Each row's groups merged in order: the sum rescaled to the row's maximum, the best offered group by group
     * (a group's columns all lie before the next one's, so equal values keep the lower column first). */
#pragma omp parallel for schedule(static) if (M * G * k >= (1 << 16) && want > 1)
    for (int64_t i = 0; i < M; i++) {
        float m = -INFINITY, s = 0.0f, threshold = -INFINITY;
        for (int64_t g = 0; g < G; g++) m = maxima[i * G + g] > m ? maxima[i * G + g] : m;
        float *top = values + i * k;
        int64_t *col = columns + i * k;
        for (int64_t a = 0; a < k; a++) {
            top[a] = -INFINITY;
            col[a] = a;
        }
        for (int64_t g = 0; g < G; g++) {
            int64_t at = i * G + g;
            s += hsum(sums[at]) * exp_v(splat(maxima[at] - m))[0];
            for (int64_t a = 0; a < k; a++) {
                float v = tops[at * k + a];
                if (!(v > threshold)) break; /* a group's best are in order: none after this one enters */
                threshold = insert(top, col, k, v, cols_of[at * k + a]);
            }
        }
        float shift = m + logf(s);
        for (int64_t a = 0; a < k; a++) top[a] -= shift;
        also_values[i] = also_logits[i] - shift;
    }
    free(sums);
    free(state);
    free(cols_of);
    return 0;
}
