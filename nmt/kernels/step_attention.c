/* A decoding step's self-attention for one new query per hypothesis, with its cache's reorder and append
 * in the same pass (nmt.kernels.native loads this; nmt.decode.incremental calls it).
 *
 * For each hypothesis b and head h: the cache of the hypothesis it continues (rows[b], or b) is copied into
 * the new cache, the step's key and value are appended, and softmax(q·Kᵀ/√d_k)·V over the t + 1 positions
 * is written to out. Each (hypothesis, head) block of keys and values is attended right after it is
 * written, while it is still in the core's cache; torch's path reads the whole reordered cache back from
 * memory, through batched products that torch runs in a scalar loop at these sizes.
 *
 * Each hypothesis's result depends on its own inputs only, computed in one fixed order: a sentence's
 * translation does not depend on the rows beside it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* e^x for x <= 0 (x - max of a softmax row), -inf giving 0: Cephes' expf polynomial on x - n·ln 2, scaled by
 * 2^n, branch-free so that the compiler vectorises the loop calling it (the C library's expf is a call per
 * element). Relative error under 2e-7; below -87 (weights under 1e-38 of the row's largest) it is 0. */
static inline float exp_nonpositive(float x) {
    int under = x < -87.0f;
    x = under ? -87.0f : x;
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return under ? 0.0f : p * scale;
}

/* softmax(q·Kᵀ·scale)·V for one query over T positions: K (T, dk) and V (T, dv) contiguous; w holds T floats. */
static void attend_one(const float *q, const float *K, const float *V, int64_t T, int64_t dk, int64_t dv,
                       float scale, float *w, float *out) {
    float max = -INFINITY;
    for (int64_t j = 0; j < T; j++) {
        const float *k = K + j * dk;
        float s = 0.0f;
        for (int64_t d = 0; d < dk; d++) s += q[d] * k[d];
        s *= scale;
        w[j] = s;
        max = s > max ? s : max;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < T; j++) {
        float e = exp_nonpositive(w[j] - max);
        w[j] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    for (int64_t d = 0; d < dv; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < T; j++) {
        const float *v = V + j * dv;
        float weight = w[j] * inv;
        for (int64_t d = 0; d < dv; d++) out[d] += weight * v[d];
    }
}

/* Hypotheses b0 ≤ b < b1 of a step at position t (H heads):
 *   qkv      (R, H, 2·dk + dv): each head's query, key and value side by side; rows qkv_stride apart
 *   old_k/v  (R_old, H, t, dk | dv) contiguous: the caches as they stand (unread when t = 0)
 *   rows     (R) int64: the old row each hypothesis continues, or NULL for the same row
 *   new_k/v  (R, H, t + 1, dk | dv) contiguous: written, the reordered caches with position t appended
 *   out      (R, H·dv): written, each head's attention output; rows out_stride apart
 * Returns 0, or 1 when memory for more than 4,096 positions could not be had. */
int nmt_self_attention_step(const float *qkv, int64_t qkv_stride, const float *old_k, const float *old_v,
                            const int64_t *rows, float *new_k, float *new_v, float *out, int64_t out_stride,
                            int64_t b0, int64_t b1, int64_t H, int64_t t, int64_t dk, int64_t dv, float scale) {
    float local[4096];
    float *w = t + 1 <= 4096 ? local : (float *)malloc(sizeof(float) * (size_t)(t + 1));
    if (!w) return 1;
    for (int64_t b = b0; b < b1; b++) {
        int64_t from = rows ? rows[b] : b;
        for (int64_t h = 0; h < H; h++) {
            const float *q = qkv + b * qkv_stride + h * (2 * dk + dv);
            float *K = new_k + (b * H + h) * (t + 1) * dk;
            float *V = new_v + (b * H + h) * (t + 1) * dv;
            if (t > 0) {
                memcpy(K, old_k + (from * H + h) * t * dk, sizeof(float) * (size_t)(t * dk));
                memcpy(V, old_v + (from * H + h) * t * dv, sizeof(float) * (size_t)(t * dv));
            }
            memcpy(K + t * dk, q + dk, sizeof(float) * (size_t)dk);
            memcpy(V + t * dv, q + 2 * dk, sizeof(float) * (size_t)dv);
            attend_one(q, K, V, t + 1, dk, dv, scale, w, out + b * out_stride + h * dv);
        }
    }
    if (w != local) free(w);
    return 0;
}
