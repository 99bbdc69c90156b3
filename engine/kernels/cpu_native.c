/* CPU kernels for the engine's CPU path: MXFP4 expert matrices (the decode, and the decode fused into dot products,
 * for engine/kernels/moe_cpu.py) and bf16 matrices times a few tokens (engine.kernels.linear: the attention
 * projections and the unembedding at decode).
 *
 * Built and loaded by engine/kernels/cpu_native.py (the system C compiler, ctypes; no torch headers). One scale
 * group of a row is 16 packed bytes: byte j holds element 2j in its low nibble and 2j+1 in its high one. Both
 * entry points work in the "split" order of a group, its 16 even elements then its 16 odd ones, which keeps every
 * SIMD lane independent (no interleaving): the caller puts x in the same order (moe_cpu.split_order).
 *
 *   decode : W rows [r0, r1) -> fp32 or bf16, split order             (then a GEMM with all of an expert's tokens)
 *   matvec : out[t, r] = sum_k xs[t, k] * W[r, k] for a few tokens    (the weights never written out as floats)
 *   bf16mv : out[t, r] = sum_k x[t, k] * W[r, k], W and x bf16 in natural order, fp32 sums (AVX512-BF16's dot
 *            product of pairs where the CPU has it, else each value widened exactly to fp32)
 *   argmax : the first index of each row's largest value (fp32 or bf16 rows; NaN counts as largest, as in torch)
 *   moe    : the whole MoE MLP of a few tokens per expert (decode): per active expert, its tokens' W1 matvec, bias,
 *            clamped SwiGLU, W2 matvec, bias, added into the output with the router's weight; fp32 sums, the
 *            intermediate results rounded to bf16 where the model runs in bf16 (as the torch path rounds them)
 *   decode attention : one query per sequence over the paged KV cache, the sink in the softmax's denominator,
 *            sliding window, grouped query heads; per (sequence, KV head): scores, then the weighted sum of values
 *
 * Values are exact: an E2M1 value times a power of two has at most 2 significant bits, so the fp32 product is
 * exact and its top 16 bits are the bf16 value. The vector paths (AVX-512, AVX2+FMA) are chosen at run time; the
 * scalar path is the same arithmetic for any other CPU. Rows are split between threads (pthreads).
 */
#include <pthread.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GPTOSS_X86 1
#endif

#define MAX_TOKENS 4 /* tokens per pass over the weights in matvec and bf16mv (by_chunks splits more) */
/* calls inner(j, n) with n a constant in each call, so each instance keeps its accumulators in registers */
#define BY_TOKEN_COUNT(inner, j)                                                                                  \
    switch ((j)->n) {                                                                                              \
        case 1: inner(j, 1); break;                                                                                \
        case 2: inner(j, 2); break;                                                                                \
        case 3: inner(j, 3); break;                                                                                \
        default: inner(j, 4); break;                                                                               \
    }

static const float FP4[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                              -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

static inline float scale_of(uint8_t s) { /* 2 ** (s - 127) exactly; s = 0 is the subnormal 2 ** -127 */
    uint32_t bits = s ? (uint32_t)s << 23 : 0x400000u;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

typedef struct job {
    const uint8_t *blocks, *scales; /* [R, G, 16], [R, G] */
    int64_t G, r0, r1;
    void *out;          /* decode: [R, G * 32] fp32 or bf16; matvec: [n, R] fp32 */
    const float *xs;    /* matvec: [n, G * 32] fp32, split order; bf16mv: [n, K] fp32 */
    int64_t n, R;
    int bf16;
    const uint16_t *w;  /* bf16mv: [R, K] bf16 (K is G here) */
    const uint16_t *xb; /* bf16mv: [n, K] bf16 (xs holds it widened for the paths without AVX512-BF16) */
    const uint16_t *bias; /* bf16mv: [R] bf16 or NULL; out is bf16 when bf16 is set, else fp32 */
    void (*inner)(const struct job *); /* by_chunks: the kernel run on MAX_TOKENS tokens at a time */
} job_t;

/* ---- scalar ---- */

static void decode_scalar(const job_t *j) {
    for (int64_t r = j->r0; r < j->r1; r++) {
        for (int64_t g = 0; g < j->G; g++) {
            const uint8_t *b = j->blocks + (r * j->G + g) * 16;
            float f = scale_of(j->scales[r * j->G + g]), v[32];
            for (int i = 0; i < 16; i++) {
                v[i] = FP4[b[i] & 15] * f;
                v[16 + i] = FP4[b[i] >> 4] * f;
            }
            int64_t at = (r * j->G + g) * 32;
            if (j->bf16) {
                uint16_t *o = (uint16_t *)j->out + at;
                for (int i = 0; i < 32; i++) {
                    uint32_t bits;
                    memcpy(&bits, &v[i], 4);
                    o[i] = (uint16_t)(bits >> 16);
                }
            } else {
                memcpy((float *)j->out + at, v, sizeof v);
            }
        }
    }
}

static void matvec_scalar(const job_t *j) {
    int64_t K = j->G * 32;
    for (int64_t r = j->r0; r < j->r1; r++) {
        float acc[MAX_TOKENS] = {0};
        for (int64_t g = 0; g < j->G; g++) {
            const uint8_t *b = j->blocks + (r * j->G + g) * 16;
            float f = scale_of(j->scales[r * j->G + g]);
            for (int64_t t = 0; t < j->n; t++) {
                const float *x = j->xs + t * K + g * 32;
                float s = 0.0f;
                for (int i = 0; i < 16; i++) s += FP4[b[i] & 15] * x[i] + FP4[b[i] >> 4] * x[16 + i];
                acc[t] += s * f;
            }
        }
        for (int64_t t = 0; t < j->n; t++) ((float *)j->out)[t * j->R + r] = acc[t];
    }
}

static inline float widen(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t round_bf16(float f) { /* round to nearest even, as torch's fp32 -> bf16 */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1)) >> 16);
}

static inline void put_linear(const job_t *j, int64_t t, int64_t r, float s) { /* bf16mv: + bias, then store */
    if (j->bias) s += widen(j->bias[r]);
    if (j->bf16)
        ((uint16_t *)j->out)[t * j->R + r] = round_bf16(s);
    else
        ((float *)j->out)[t * j->R + r] = s;
}

static void bf16mv_scalar(const job_t *j) {
    int64_t K = j->G;
    for (int64_t r = j->r0; r < j->r1; r++) {
        const uint16_t *w = j->w + r * K;
        for (int64_t t = 0; t < j->n; t++) {
            const float *x = j->xs + t * K;
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++) s += widen(w[k]) * x[k];
            put_linear(j, t, r, s);
        }
    }
}

static void argmax_row_scalar(const job_t *j, int64_t r) {
    int64_t V = j->G, best = 0;
    float top = -__builtin_inff();
    for (int64_t i = 0; i < V; i++) {
        float v = j->xb ? widen(j->xb[r * V + i]) : j->xs[r * V + i];
        if (v != v) { /* NaN: torch's argmax returns the first one */
            best = i;
            break;
        }
        if (v > top || i == 0) {
            top = v;
            best = i;
        }
    }
    ((int64_t *)j->out)[r] = best;
}

static void argmax_scalar(const job_t *j) {
    for (int64_t r = j->r0; r < j->r1; r++) argmax_row_scalar(j, r);
}

#ifdef GPTOSS_X86
/* ---- AVX2 + FMA: 8 lanes; the magnitude from an 8-entry table (vpermps reads the low 3 bits), the sign ORed in ---- */

__attribute__((target("avx2,fma"))) static inline void group_avx2(const uint8_t *b, float f, __m256 v[4]) {
    const __m256 lut = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
    const __m256i fifteen = _mm256_set1_epi32(15), eight = _mm256_set1_epi32(8);
    const __m256 scale = _mm256_set1_ps(f);
    __m128i raw = _mm_loadu_si128((const __m128i *)b);
    __m256i half[2] = {_mm256_cvtepu8_epi32(raw), _mm256_cvtepu8_epi32(_mm_srli_si128(raw, 8))};
    for (int h = 0; h < 2; h++) {
        __m256i lo = _mm256_and_si256(half[h], fifteen), hi = _mm256_srli_epi32(half[h], 4);
        __m256 slo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(lo, eight), 28));
        __m256 shi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(hi, eight), 28));
        v[h] = _mm256_mul_ps(_mm256_or_ps(_mm256_permutevar8x32_ps(lut, lo), slo), scale);
        v[2 + h] = _mm256_mul_ps(_mm256_or_ps(_mm256_permutevar8x32_ps(lut, hi), shi), scale);
    }
}

__attribute__((target("avx2,fma"))) static inline void store_bf16_avx2(uint16_t *o, __m256 a, __m256 b) {
    __m256i packed = _mm256_packus_epi32(_mm256_srli_epi32(_mm256_castps_si256(a), 16),
                                         _mm256_srli_epi32(_mm256_castps_si256(b), 16));
    _mm256_storeu_si256((__m256i *)o, _mm256_permute4x64_epi64(packed, 0xD8)); /* undo packus's lane order */
}

__attribute__((target("avx2,fma"))) static void decode_avx2(const job_t *j) {
    for (int64_t r = j->r0; r < j->r1; r++) {
        for (int64_t g = 0; g < j->G; g++) {
            __m256 v[4];
            group_avx2(j->blocks + (r * j->G + g) * 16, scale_of(j->scales[r * j->G + g]), v);
            int64_t at = (r * j->G + g) * 32;
            if (j->bf16) {
                store_bf16_avx2((uint16_t *)j->out + at, v[0], v[1]);
                store_bf16_avx2((uint16_t *)j->out + at + 16, v[2], v[3]);
            } else {
                for (int q = 0; q < 4; q++) _mm256_storeu_ps((float *)j->out + at + 8 * q, v[q]);
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static inline float hsum_avx2(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"), always_inline)) static inline void matvec_avx2_n(const job_t *j, const int n) {
    int64_t K = j->G * 32;
    for (int64_t r = j->r0; r < j->r1; r++) {
        __m256 acc[MAX_TOKENS][2];
        for (int t = 0; t < n; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
        for (int64_t g = 0; g < j->G; g++) {
            __m256 v[4];
            group_avx2(j->blocks + (r * j->G + g) * 16, scale_of(j->scales[r * j->G + g]), v);
            for (int t = 0; t < n; t++) {
                const float *x = j->xs + t * K + g * 32;
                acc[t][0] = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(x), acc[t][0]);
                acc[t][1] = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(x + 8), acc[t][1]);
                acc[t][0] = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(x + 16), acc[t][0]);
                acc[t][1] = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(x + 24), acc[t][1]);
            }
        }
        for (int t = 0; t < n; t++)
            ((float *)j->out)[t * j->R + r] = hsum_avx2(_mm256_add_ps(acc[t][0], acc[t][1]));
    }
}

__attribute__((target("avx2,fma"))) static void matvec_avx2(const job_t *j) { BY_TOKEN_COUNT(matvec_avx2_n, j); }

__attribute__((target("avx2,fma"))) static inline __m256 widen_avx2(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

__attribute__((target("avx2,fma"), always_inline)) static inline void bf16mv_avx2_n(const job_t *j, const int n) {
    int64_t K = j->G;
    for (int64_t r = j->r0; r < j->r1; r++) {
        const uint16_t *w = j->w + r * K;
        __m256 acc[MAX_TOKENS][2];
        for (int t = 0; t < n; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) {
            __m256 w0 = widen_avx2(w + k), w1 = widen_avx2(w + k + 8);
            for (int t = 0; t < n; t++) {
                acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(j->xs + t * K + k), acc[t][0]);
                acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(j->xs + t * K + k + 8), acc[t][1]);
            }
        }
        for (int t = 0; t < n; t++) {
            float s = hsum_avx2(_mm256_add_ps(acc[t][0], acc[t][1]));
            for (int64_t i = k; i < K; i++) s += widen(w[i]) * j->xs[t * K + i];
            put_linear(j, t, r, s);
        }
    }
}

__attribute__((target("avx2,fma"))) static void bf16mv_avx2(const job_t *j) { BY_TOKEN_COUNT(bf16mv_avx2_n, j); }

/* ---- AVX-512: 16 lanes, the whole signed E2M1 table in one vpermps ---- */

__attribute__((target("avx512f"))) static inline void group_avx512(const uint8_t *b, float f, __m512 v[2]) {
    const __m512 lut = _mm512_loadu_ps(FP4);
    const __m512 scale = _mm512_set1_ps(f);
    __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b));
    v[0] = _mm512_mul_ps(_mm512_permutexvar_ps(bytes, lut), scale); /* vpermps reads the low 4 bits */
    v[1] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), lut), scale);
}

__attribute__((target("avx512f"))) static void decode_avx512(const job_t *j) {
    for (int64_t r = j->r0; r < j->r1; r++) {
        for (int64_t g = 0; g < j->G; g++) {
            __m512 v[2];
            group_avx512(j->blocks + (r * j->G + g) * 16, scale_of(j->scales[r * j->G + g]), v);
            int64_t at = (r * j->G + g) * 32;
            if (j->bf16) {
                for (int q = 0; q < 2; q++)
                    _mm256_storeu_si256((__m256i *)((uint16_t *)j->out + at + 16 * q),
                                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v[q]), 16)));
            } else {
                _mm512_storeu_ps((float *)j->out + at, v[0]);
                _mm512_storeu_ps((float *)j->out + at + 16, v[1]);
            }
        }
    }
}

/* n is a constant in each instance (matvec_avx512 switches on it), so the accumulators stay in registers; two
   groups per iteration with accumulators of their own keep four FMA chains going per token */
__attribute__((target("avx512f"), always_inline)) static inline void matvec_avx512_n(const job_t *j, const int n) {
    int64_t K = j->G * 32;
    for (int64_t r = j->r0; r < j->r1; r++) {
        __m512 acc[MAX_TOKENS][4];
        for (int t = 0; t < n; t++) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = _mm512_setzero_ps();
        const uint8_t *b = j->blocks + r * j->G * 16, *s = j->scales + r * j->G;
        int64_t g = 0;
        for (; g + 1 < j->G; g += 2) {
            __m512 v[2], w[2];
            group_avx512(b + g * 16, scale_of(s[g]), v);
            group_avx512(b + g * 16 + 16, scale_of(s[g + 1]), w);
            for (int t = 0; t < n; t++) {
                const float *x = j->xs + t * K + g * 32;
                acc[t][0] = _mm512_fmadd_ps(v[0], _mm512_loadu_ps(x), acc[t][0]);
                acc[t][1] = _mm512_fmadd_ps(v[1], _mm512_loadu_ps(x + 16), acc[t][1]);
                acc[t][2] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x + 32), acc[t][2]);
                acc[t][3] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 48), acc[t][3]);
            }
        }
        if (g < j->G) {
            __m512 v[2];
            group_avx512(b + g * 16, scale_of(s[g]), v);
            for (int t = 0; t < n; t++) {
                const float *x = j->xs + t * K + g * 32;
                acc[t][0] = _mm512_fmadd_ps(v[0], _mm512_loadu_ps(x), acc[t][0]);
                acc[t][1] = _mm512_fmadd_ps(v[1], _mm512_loadu_ps(x + 16), acc[t][1]);
            }
        }
        for (int t = 0; t < n; t++) {
            __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]), _mm512_add_ps(acc[t][2], acc[t][3]));
            ((float *)j->out)[t * j->R + r] = _mm512_reduce_add_ps(sum);
        }
    }
}

__attribute__((target("avx512f"))) static void matvec_avx512(const job_t *j) { BY_TOKEN_COUNT(matvec_avx512_n, j); }

__attribute__((target("avx512f"))) static inline __m512 widen_avx512(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

__attribute__((target("avx512f"), always_inline)) static inline void bf16mv_avx512_n(const job_t *j, const int n) {
    int64_t K = j->G;
    for (int64_t r = j->r0; r < j->r1; r++) {
        const uint16_t *w = j->w + r * K;
        __m512 acc[MAX_TOKENS][2];
        for (int t = 0; t < n; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 32 <= K; k += 32) {
            __m512 w0 = widen_avx512(w + k), w1 = widen_avx512(w + k + 16);
            for (int t = 0; t < n; t++) {
                acc[t][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(j->xs + t * K + k), acc[t][0]);
                acc[t][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(j->xs + t * K + k + 16), acc[t][1]);
            }
        }
        for (int t = 0; t < n; t++) {
            float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
            for (int64_t i = k; i < K; i++) s += widen(w[i]) * j->xs[t * K + i];
            put_linear(j, t, r, s);
        }
    }
}

__attribute__((target("avx512f"))) static void bf16mv_avx512(const job_t *j) { BY_TOKEN_COUNT(bf16mv_avx512_n, j); }

#define PREFETCH_BF16 2048 /* weights read ahead of the two rows' streams (4 KiB): the hardware prefetcher alone
                             leaves a 412 MB unembedding at 18 GB/s for one token, this 20-22 (2 threads) */

/* AVX512-BF16: 32 weights and 32 inputs per vdpbf16ps (pairs multiplied and summed into fp32 lanes); two rows at a
   time share the loads of x, and each keeps two chains */
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void bf16dp_n(const job_t *j, const int n) {
    int64_t K = j->G, body = K / 64 * 64;
    for (int64_t r = j->r0; r < j->r1; r += 2) {
        int two = r + 1 < j->r1;
        const uint16_t *w0 = j->w + r * K, *w1 = two ? w0 + K : w0;
        __m512 acc[MAX_TOKENS][4];
        for (int t = 0; t < n; t++) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = _mm512_setzero_ps();
        for (int64_t k = 0; k < body; k += 64) {
            _mm_prefetch((const char *)(w0 + k + PREFETCH_BF16), _MM_HINT_T0); /* harmless past the end */
            _mm_prefetch((const char *)(w1 + k + PREFETCH_BF16), _MM_HINT_T0);
            __m512bh a0 = (__m512bh)_mm512_loadu_si512(w0 + k), a1 = (__m512bh)_mm512_loadu_si512(w0 + k + 32);
            __m512bh b0 = (__m512bh)_mm512_loadu_si512(w1 + k), b1 = (__m512bh)_mm512_loadu_si512(w1 + k + 32);
            for (int t = 0; t < n; t++) {
                const uint16_t *x = j->xb + t * K + k;
                __m512bh x0 = (__m512bh)_mm512_loadu_si512(x), x1 = (__m512bh)_mm512_loadu_si512(x + 32);
                acc[t][0] = _mm512_dpbf16_ps(acc[t][0], a0, x0);
                acc[t][1] = _mm512_dpbf16_ps(acc[t][1], a1, x1);
                acc[t][2] = _mm512_dpbf16_ps(acc[t][2], b0, x0);
                acc[t][3] = _mm512_dpbf16_ps(acc[t][3], b1, x1);
            }
        }
        for (int t = 0; t < n; t++) {
            float s0 = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
            float s1 = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][2], acc[t][3]));
            for (int64_t i = body; i < K; i++) {
                s0 += widen(w0[i]) * widen(j->xb[t * K + i]);
                s1 += widen(w1[i]) * widen(j->xb[t * K + i]);
            }
            put_linear(j, t, r, s0);
            if (two) put_linear(j, t, r + 1, s1);
        }
    }
}

__attribute__((target("avx512f,avx512bf16"))) static void bf16mv_avx512bf16(const job_t *j) {
    BY_TOKEN_COUNT(bf16dp_n, j);
}

/* per lane the first index of its largest value, then the lowest index among the lanes holding the row's largest;
   a row with a NaN (the compare of a value with itself fails) goes to the scalar path */
__attribute__((target("avx512f"))) static void argmax_avx512(const job_t *j) {
    int64_t V = j->G;
    const __m512i step = _mm512_set1_epi32(16);
    for (int64_t r = j->r0; r < j->r1; r++) {
        __m512 top = _mm512_set1_ps(-__builtin_inff());
        __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), best = idx;
        __mmask16 nan = 0;
        int64_t i = 0;
        for (; i + 16 <= V; i += 16) {
            __m512 v = j->xb ? widen_avx512(j->xb + r * V + i) : _mm512_loadu_ps(j->xs + r * V + i);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            __mmask16 up = _mm512_cmp_ps_mask(v, top, _CMP_GT_OQ);
            top = _mm512_mask_mov_ps(top, up, v);
            best = _mm512_mask_mov_epi32(best, up, idx);
            idx = _mm512_add_epi32(idx, step);
        }
        if (nan || V < 16 || V > 0x7fffffff) {
            argmax_row_scalar(j, r);
            continue;
        }
        float lanes[16];
        int32_t at[16];
        _mm512_storeu_ps(lanes, top);
        _mm512_storeu_si512(at, best);
        float m = lanes[0];
        int64_t pick = at[0];
        for (int l = 1; l < 16; l++)
            if (lanes[l] > m || (lanes[l] == m && at[l] < pick)) {
                m = lanes[l];
                pick = at[l];
            }
        for (; i < V; i++) { /* the tail comes after every lane's elements */
            float v = j->xb ? widen(j->xb[r * V + i]) : j->xs[r * V + i];
            if (v != v) {
                pick = -1;
                break;
            }
            if (v > m) {
                m = v;
                pick = i;
            }
        }
        if (pick < 0)
            argmax_row_scalar(j, r);
        else
            ((int64_t *)j->out)[r] = pick;
    }
}
#endif

/* ---- dispatch and threads ---- */

static void by_chunks(const job_t *j) { /* matvec and bf16mv over any number of tokens, MAX_TOKENS per pass */
    int64_t K = j->w ? j->G : j->G * 32, size = j->bf16 ? 2 : 4;
    for (int64_t t = 0; t < j->n; t += MAX_TOKENS) {
        job_t part = *j;
        part.n = j->n - t < MAX_TOKENS ? j->n - t : MAX_TOKENS;
        if (part.xs) part.xs += t * K;
        if (part.xb) part.xb += t * K;
        part.out = (char *)j->out + t * j->R * size;
        j->inner(&part);
    }
}

typedef void (*kernel_t)(const job_t *);

static int isa(void) { /* 3: AVX-512 with BF16, 2: AVX-512, 1: AVX2+FMA, 0: scalar */
#ifdef GPTOSS_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16")) return 3;
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

static int forced_isa = -1; /* set by gptoss_mxfp4_set_isa (tests run every path); -1: the best this CPU has */

enum { DECODE, MATVEC, BF16MV, ARGMAX };

static kernel_t pick(int kind) {
    static const kernel_t scalar[] = {decode_scalar, matvec_scalar, bf16mv_scalar, argmax_scalar};
    int level = forced_isa >= 0 ? forced_isa : isa();
#ifdef GPTOSS_X86
    static const kernel_t avx2[] = {decode_avx2, matvec_avx2, bf16mv_avx2, argmax_scalar};
    static const kernel_t avx512[] = {decode_avx512, matvec_avx512, bf16mv_avx512, argmax_avx512};
    static const kernel_t avx512bf16[] = {decode_avx512, matvec_avx512, bf16mv_avx512bf16, argmax_avx512};
    if (level >= 3) return avx512bf16[kind];
    if (level == 2) return avx512[kind];
    if (level == 1) return avx2[kind];
#endif
    (void)level;
    return scalar[kind];
}

typedef struct {
    kernel_t fn;
    job_t job;
} task_t;

static void *run_task(void *arg) {
    task_t *t = arg;
    t->fn(&t->job);
    return NULL;
}

#define MAX_THREADS 64

#define MIN_THREAD_BYTES (256 << 10) /* a thread's start (tens of microseconds) pays for itself past this much work */

static int64_t rows_per_thread(int64_t row_bytes, int64_t floor) { /* MIN_THREAD_BYTES and `floor` rows at least */
    int64_t rows = MIN_THREAD_BYTES / (row_bytes > 0 ? row_bytes : 1);
    return rows > floor ? rows : floor;
}

static void run(kernel_t fn, job_t job, int threads, int64_t min_rows) { /* min_rows: per thread, at least */
    int64_t rows = job.r1 - job.r0;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > rows / min_rows) threads = (int)(rows / min_rows); /* a thread's start-up is worth that much */
    if (threads < 2) {
        fn(&job);
        return;
    }
    task_t tasks[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int i = 0; i < threads; i++) {
        tasks[i].fn = fn;
        tasks[i].job = job;
        tasks[i].job.r0 = job.r0 + rows * i / threads;
        tasks[i].job.r1 = job.r0 + rows * (i + 1) / threads;
    }
    for (int i = 1; i < threads; i++) started[i] = pthread_create(&ids[i], NULL, run_task, &tasks[i]) == 0;
    run_task(&tasks[0]);
    for (int i = 1; i < threads; i++) {
        if (started[i])
            pthread_join(ids[i], NULL);
        else
            run_task(&tasks[i]); /* no thread to be had: this one does the share */
    }
}

/* ---- exported ---- */

int gptoss_mxfp4_isa(void) { return forced_isa >= 0 ? forced_isa : isa(); }

int gptoss_mxfp4_set_isa(int level) { /* -1: back to the best; returns the level now in use, or -1 if unsupported */
    if (level > isa()) return -1;
    forced_isa = level;
    return gptoss_mxfp4_isa();
}

void gptoss_mxfp4_decode(const uint8_t *blocks, const uint8_t *scales, int64_t R, int64_t G, void *out, int bf16,
                         int threads) {
    job_t job = {blocks, scales, G, 0, R, out, NULL, 0, R, bf16, NULL, NULL, NULL, NULL};
    run(pick(DECODE), job, threads, rows_per_thread(G * 16, 16));
}

int gptoss_mxfp4_matvec(const float *xs, int64_t n, const uint8_t *blocks, const uint8_t *scales, int64_t R,
                        int64_t G, float *out, int threads) {
    if (n < 1) return -1;
    job_t job = {blocks, scales, G, 0, R, out, xs, n, R, 0, NULL, NULL, NULL, pick(MATVEC)};
    run(by_chunks, job, threads, rows_per_thread(G * 16 * ((n + MAX_TOKENS - 1) / MAX_TOKENS), 16));
    return 0;
}

int gptoss_bf16_matvec(const uint16_t *xb, int64_t n, const uint16_t *w, const uint16_t *bias, int64_t R, int64_t K,
                       void *out, int out_bf16, int threads) {
    if (n < 1) return -1;
    float *xs = NULL;
    if (gptoss_mxfp4_isa() < 3) { /* the widening paths read x as fp32 */
        xs = malloc((size_t)(n * K) * sizeof(float));
        if (xs == NULL) return -2;
        for (int64_t i = 0; i < n * K; i++) xs[i] = widen(xb[i]);
    }
    job_t job = {NULL, NULL, K, 0, R, out, xs, n, R, out_bf16, w, xb, bias, pick(BF16MV)};
    run(by_chunks, job, threads, rows_per_thread(K * 2 * ((n + MAX_TOKENS - 1) / MAX_TOKENS), 16));
    free(xs);
    return 0;
}

void gptoss_argmax(const void *rows, int bf16, int64_t n, int64_t V, int64_t *out, int threads) {
    job_t job = {NULL, NULL, V, 0, n, out, bf16 ? NULL : rows, n, n, 0, NULL, bf16 ? rows : NULL, NULL, NULL};
    run(pick(ARGMAX), job, threads, rows_per_thread(V * (bf16 ? 2 : 4), 1));
}

/* ---- decode attention (plain C that the compiler vectorizes per target clone) ---- */

typedef struct {
    const void *q; /* [T, KV * G, D], fp32 or bf16 (act_bf16), like out */
    void *out;
    int act_bf16, kv_bf16;
    const int32_t *rows, *seq_lens, *block_table; /* [B] query row of each sequence, [B] tokens, [B, bt_stride] */
    int64_t bt_stride, block_size, plane;         /* plane: elements of the K half of the cache */
    const void *kv;                               /* [2, blocks, block_size, KV, D] */
    int64_t KV, G, D, window;                     /* window 0: none */
    const float *sinks;                           /* [KV * G] */
    float scale;
    int64_t item0, item1; /* (sequence, KV head) items b * KV + h this thread does */
} attn_t;

/* exp(x) for x <= 0 (a score minus the row's largest), within 2 ulp of exp down to -87, where it stays (expf gives
   denormals below: a difference under 1e-37 against the row's largest term, 1): x = n ln 2 + r with |r| <= ln 2 / 2
   (ln 2 in two parts, n * the first exact), e^r by its Taylor series to r^7, times 2^n. Plain C without branches or
   calls, so `omp simd` loops vectorize it (libm's expf is a call per value) */
static inline float exp_le0(float x) {
    x = x > -87.0f ? x : -87.0f;
    float t = x * 1.44269504088896341f - 0.5f;
    int32_t n = (int32_t)t; /* toward zero: floor(t) + 1 when t is not whole, so n ends as round(x log2 e) */
    n += 1 - (t < (float)n);
    float r = x - (float)n * 0.693145751953125f;
    r = r - (float)n * 1.428606765330187e-06f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t bits;
        float value;
    } scale = {(n + 127) << 23};
    return p * scale.value;
}

static inline void load_row(const void *base, int bf16, int64_t at, int64_t D, float *to) {
    if (bf16) {
        const uint16_t *p = (const uint16_t *)base + at;
        for (int64_t d = 0; d < D; d++) to[d] = widen(p[d]);
    } else {
        memcpy(to, (const float *)base + at, (size_t)D * sizeof(float));
    }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) static void attend_items(const attn_t *a) {
    int64_t G = a->G, D = a->D, cap = 0;
    float *buf = NULL; /* per item: q [G, D], acc [G, D], row [D], scores [G, N] */
    for (int64_t item = a->item0; item < a->item1; item++) {
        int64_t b = item / a->KV, h = item % a->KV, L = a->seq_lens[b], row = a->rows[b];
        int64_t first = a->window > 0 && L > a->window ? L - a->window : 0, N = L - first;
        int64_t need = (2 * G + 1) * D + G * (N > 0 ? N : 1);
        if (need > cap) {
            free(buf);
            cap = need * 2;
            buf = malloc((size_t)cap * sizeof(float));
            if (buf == NULL) return; /* the caller checks the output for this */
        }
        float *qf = buf, *acc = qf + G * D, *kv = acc + G * D, *sc = kv + D;
        for (int64_t g = 0; g < G; g++) {
            load_row(a->q, a->act_bf16, (row * a->KV * G + h * G + g) * D, D, qf + g * D);
            for (int64_t d = 0; d < D; d++) qf[g * D + d] *= a->scale;
        }
        for (int64_t n = 0, blk = first / a->block_size, off = first % a->block_size; n < N; n++) {
            int64_t slot = (int64_t)a->block_table[b * a->bt_stride + blk] * a->block_size + off;
            if (++off == a->block_size) { /* the next key's place, without a division per key */
                off = 0;
                blk++;
            }
            load_row(a->kv, a->kv_bf16, (slot * a->KV + h) * D, D, kv);
            for (int64_t g = 0; g < G; g++) {
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int64_t d = 0; d < D; d++) s += qf[g * D + d] * kv[d];
                sc[g * N + n] = s;
            }
        }
        memset(acc, 0, (size_t)(G * D) * sizeof(float));
        for (int64_t g = 0; g < G; g++) { /* softmax over the keys and the sink, in place */
            float sink = a->sinks[h * G + g], m = sink, sum = 0.0f, *p = sc + g * N;
#pragma omp simd reduction(max : m)
            for (int64_t n = 0; n < N; n++) m = p[n] > m ? p[n] : m;
#pragma omp simd reduction(+ : sum)
            for (int64_t n = 0; n < N; n++) {
                p[n] = exp_le0(p[n] - m);
                sum += p[n];
            }
            float inv = 1.0f / (sum + expf(sink - m));
#pragma omp simd
            for (int64_t n = 0; n < N; n++) p[n] *= inv;
        }
        for (int64_t n = 0, blk = first / a->block_size, off = first % a->block_size; n < N; n++) {
            int64_t slot = (int64_t)a->block_table[b * a->bt_stride + blk] * a->block_size + off;
            if (++off == a->block_size) { /* the next key's place, without a division per key */
                off = 0;
                blk++;
            }
            load_row(a->kv, a->kv_bf16, a->plane + (slot * a->KV + h) * D, D, kv);
            for (int64_t g = 0; g < G; g++) {
                float p = sc[g * N + n];
                for (int64_t d = 0; d < D; d++) acc[g * D + d] += p * kv[d];
            }
        }
        for (int64_t g = 0; g < G; g++) {
            int64_t at = (row * a->KV * G + h * G + g) * D;
            if (a->act_bf16)
                for (int64_t d = 0; d < D; d++) ((uint16_t *)a->out)[at + d] = round_bf16(acc[g * D + d]);
            else
                memcpy((float *)a->out + at, acc + g * D, (size_t)D * sizeof(float));
        }
    }
    free(buf);
}

static void *attend_task(void *arg) {
    attend_items(arg);
    return NULL;
}

void gptoss_decode_attention(const void *q, void *out, int act_bf16, int64_t B, const int32_t *rows,
                             const int32_t *seq_lens, const int32_t *block_table, int64_t bt_stride, const void *kv,
                             int kv_bf16, int64_t num_blocks, int64_t block_size, int64_t KV, int64_t G, int64_t D,
                             const float *sinks, int64_t window, float scale, int threads) {
    attn_t base = {q, out, act_bf16, kv_bf16, rows, seq_lens, block_table, bt_stride, block_size,
                   num_blocks * block_size * KV * D, kv, KV, G, D, window, sinks, scale, 0, B * KV};
    int64_t items = B * KV, keys = 0;
    for (int64_t b = 0; b < B; b++) keys += window > 0 && seq_lens[b] > window ? window : seq_lens[b];
    int64_t bytes = keys * KV * D * 2 * (kv_bf16 ? 2 : 4); /* the K and V rows read */
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > items) threads = (int)items;
    if (threads > bytes / MIN_THREAD_BYTES) threads = (int)(bytes / MIN_THREAD_BYTES);
    if (threads < 2) {
        attend_items(&base);
        return;
    }
    attn_t parts[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int i = 0; i < threads; i++) {
        parts[i] = base;
        parts[i].item0 = items * i / threads;
        parts[i].item1 = items * (i + 1) / threads;
    }
    for (int i = 1; i < threads; i++) started[i] = pthread_create(&ids[i], NULL, attend_task, &parts[i]) == 0;
    attend_items(&parts[0]);
    for (int i = 1; i < threads; i++) {
        if (started[i])
            pthread_join(ids[i], NULL);
        else
            attend_items(&parts[i]);
    }
}

/* ---- the MoE MLP for decode ---- */

static inline float bias_at(const void *bias, int bf16, int64_t i) {
    return bf16 ? widen(((const uint16_t *)bias)[i]) : ((const float *)bias)[i];
}

static void matvec_rows(const float *xs, int64_t n, const uint8_t *blocks, const uint8_t *scales, int64_t R,
                        int64_t G, float *out, int threads) {
    job_t job = {blocks, scales, G, 0, R, out, xs, n, R, 0, NULL, NULL, NULL, pick(MATVEC)};
    run(by_chunks, job, threads, rows_per_thread(G * 16 * ((n + MAX_TOKENS - 1) / MAX_TOKENS), 16));
}

/* x [T, H] fp32, ids [T, K] (ids outside [0, E) are held by another rank: skipped), weights [T, K] fp32; w1 [E, 2I,
   H/32, 16] + scales [E, 2I, H/32], b1 [E, 2I]; w2 [E, H, I/32, 16] + scales [E, H, I/32], b2 [E, H]; biases fp32 or
   bf16. out [T, H] fp32 is added to. act_bf16: h, the SwiGLU and each expert's output rounded to bf16 (a bf16
   model's torch path holds them in bf16). Returns 0, or -1 when out of memory (out then partly written). */
static inline float as_act(float v, int act_bf16) { return act_bf16 ? widen(round_bf16(v)) : v; }

int gptoss_moe_mxfp4(const float *x, int64_t T, int64_t H, const int64_t *ids, const float *weights, int64_t K,
                     const uint8_t *w1b, const uint8_t *w1s, const void *b1, const uint8_t *w2b, const uint8_t *w2s,
                     const void *b2, int bias_bf16, int act_bf16, int64_t E, int64_t I, float limit, float alpha,
                     float *out, int threads) {
    int64_t A = T * K, *count = calloc((size_t)E + 1, sizeof(int64_t)), *order = malloc((size_t)(A > 0 ? A : 1) * 8);
    float *xs = malloc((size_t)(A * H > 0 ? A * H : 1) * sizeof(float));
    float *h = malloc((size_t)(A * 2 * I > 0 ? A * 2 * I : 1) * sizeof(float));
    float *act = malloc((size_t)(A * I > 0 ? A * I : 1) * sizeof(float));
    float *y = malloc((size_t)(A * H > 0 ? A * H : 1) * sizeof(float));
    int status = 0;
    if (!count || !order || !xs || !h || !act || !y) {
        status = -1;
        goto done;
    }
    for (int64_t a = 0; a < A; a++) /* assignments grouped by expert (counting sort, stable) */
        if (ids[a] >= 0 && ids[a] < E) count[ids[a] + 1]++;
    for (int64_t e = 0; e < E; e++) count[e + 1] += count[e];
    {
        int64_t *next = malloc((size_t)(E + 1) * sizeof(int64_t));
        if (!next) {
            status = -1;
            goto done;
        }
        memcpy(next, count, (size_t)(E + 1) * sizeof(int64_t));
        for (int64_t a = 0; a < A; a++)
            if (ids[a] >= 0 && ids[a] < E) order[next[ids[a]]++] = a;
        free(next);
    }
    for (int64_t e = 0; e < E; e++) {
        int64_t n = count[e + 1] - count[e];
        if (n == 0) continue;
        const int64_t *mine = order + count[e];
        for (int64_t i = 0; i < n; i++) { /* the expert's tokens, each group of 32 in split order */
            const float *src = x + (mine[i] / K) * H;
            float *dst = xs + i * H;
            for (int64_t g = 0; g < H / 32; g++)
                for (int j = 0; j < 16; j++) {
                    dst[g * 32 + j] = src[g * 32 + 2 * j];
                    dst[g * 32 + 16 + j] = src[g * 32 + 2 * j + 1];
                }
        }
        matvec_rows(xs, n, w1b + e * 2 * I * H / 2, w1s + e * 2 * I * (H / 32), 2 * I, H / 32, h, threads);
        for (int64_t i = 0; i < n; i++) /* + b1, SwiGLU (gate even, up odd), written in split order for W2 */
            for (int64_t c = 0; c < I; c++) {
                float gate = as_act(h[i * 2 * I + 2 * c] + bias_at(b1, bias_bf16, e * 2 * I + 2 * c), act_bf16);
                float up = as_act(h[i * 2 * I + 2 * c + 1] + bias_at(b1, bias_bf16, e * 2 * I + 2 * c + 1), act_bf16);
                gate = gate < limit ? gate : limit;
                up = up < -limit ? -limit : (up > limit ? limit : up);
                float v;
                if (act_bf16) { /* each step rounded, as the torch path's bf16 ops do: the same bits */
                    float scaled = as_act(alpha * gate, 1), sig = as_act(1.0f / (1.0f + expf(-scaled)), 1);
                    v = as_act(gate * sig, 1) * as_act(up + 1.0f, 1);
                } else {
                    v = gate / (1.0f + expf(-alpha * gate)) * (up + 1.0f);
                }
                int64_t g = c / 32, j = c % 32;
                act[i * I + g * 32 + (j % 2) * 16 + j / 2] = as_act(v, act_bf16);
            }
        matvec_rows(act, n, w2b + e * H * I / 2, w2s + e * H * (I / 32), H, I / 32, y, threads);
        for (int64_t i = 0; i < n; i++) {
            float w = weights[mine[i]];
            float *dst = out + (mine[i] / K) * H;
            for (int64_t c = 0; c < H; c++)
                dst[c] += w * as_act(y[i * H + c] + bias_at(b2, bias_bf16, e * H + c), act_bf16);
        }
    }
done:
    free(count);
    free(order);
    free(xs);
    free(h);
    free(act);
    free(y);
    return status;
}

int gptoss_mxfp4_max_tokens(void) { return MAX_TOKENS; }
