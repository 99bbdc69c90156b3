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
#include <cpuid.h>
#include <immintrin.h>
#define GPTOSS_X86 1
#endif
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
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
/* FP4 as bf16 (32 entries: vpermw's table) */
static const uint16_t FP4_BF16[32] = {0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080, 0x40C0,
                                     0x8000, 0xBF00, 0xBF80, 0xBFC0, 0xC000, 0xC040, 0xC080, 0xC0C0};

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
    const float *wf;                   /* f32linear: [R, K] fp32 (K is G here) */
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

/* the SIMD argmax's end for row r: the lanes' largest (the first index of equal ones), then the elements from i on
   (the tail after every lane's); a NaN there: the scalar row */
static void argmax_finish(const job_t *j, int64_t r, const float *lanes, const int32_t *at, int n, int64_t i) {
    int64_t V = j->G, pick = at[0];
    float m = lanes[0];
    for (int l = 1; l < n; l++)
        if (lanes[l] > m || (lanes[l] == m && at[l] < pick)) {
            m = lanes[l];
            pick = at[l];
        }
    for (; i < V; i++) {
        float v = j->xb ? widen(j->xb[r * V + i]) : j->xs[r * V + i];
        if (v != v) {
            argmax_row_scalar(j, r);
            return;
        }
        if (v > m) {
            m = v;
            pick = i;
        }
    }
    ((int64_t *)j->out)[r] = pick;
}

static void argmax_scalar(const job_t *j) {
    for (int64_t r = j->r0; r < j->r1; r++) argmax_row_scalar(j, r);
}

#ifdef GPTOSS_X86
/* ---- AVX2 + FMA: 8 lanes; each code's bf16 bits from two 16-byte tables (vpshufb: the high and the low byte, the
   sign included), widened to fp32 and times the scale ---- */

/* a scale group's 16 bytes -> its 32 values in split order (v[0]: the low codes of bytes 0-7, v[1]: of bytes 8-15,
   v[2], v[3]: the high codes), each an exact product (a power-of-two scale): 128-bit table lookups and unpacks (one
   micro-op each on Zen 1, where a 256-bit vpermps takes three) */
__attribute__((target("avx2,fma"))) static inline void group_avx2(const uint8_t *b, float f, __m256 v[4]) {
    const __m128i t0 = _mm_loadu_si128((const __m128i *)FP4_BF16), t1 = _mm_loadu_si128((const __m128i *)FP4_BF16 + 1);
    const __m128i mask = _mm_set1_epi8(15), byte = _mm_set1_epi16(255);
    const __m128i high = _mm_packus_epi16(_mm_srli_epi16(t0, 8), _mm_srli_epi16(t1, 8));
    const __m128i low = _mm_packus_epi16(_mm_and_si128(t0, byte), _mm_and_si128(t1, byte));
    const __m256 scale = _mm256_set1_ps(f);
    __m128i raw = _mm_loadu_si128((const __m128i *)b);
    __m128i codes[2] = {_mm_and_si128(raw, mask), _mm_and_si128(_mm_srli_epi16(raw, 4), mask)};
    for (int h = 0; h < 2; h++) {
        __m128i hb = _mm_shuffle_epi8(high, codes[h]), lb = _mm_shuffle_epi8(low, codes[h]);
        __m128i words[2] = {_mm_unpacklo_epi8(lb, hb), _mm_unpackhi_epi8(lb, hb)}; /* bf16 bits, bytes 0-7, 8-15 */
        for (int q = 0; q < 2; q++)
            v[2 * h + q] = _mm256_mul_ps(
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(words[q]), 16)), scale);
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

/* argmax_avx512's 8-lane twin: each lane keeps its largest value and first index; a NaN anywhere: the scalar row */
__attribute__((target("avx2,fma"))) static void argmax_avx2(const job_t *j) {
    int64_t V = j->G;
    const __m256i step = _mm256_set1_epi32(8);
    for (int64_t r = j->r0; r < j->r1; r++) {
        __m256 top = _mm256_set1_ps(-__builtin_inff()), nan = _mm256_setzero_ps();
        __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), best = idx;
        int64_t i = 0;
        for (; i + 8 <= V; i += 8) {
            __m256 v = j->xb ? widen_avx2(j->xb + r * V + i) : _mm256_loadu_ps(j->xs + r * V + i);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            __m256 up = _mm256_cmp_ps(v, top, _CMP_GT_OQ);
            top = _mm256_blendv_ps(top, v, up);
            best = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(best), _mm256_castsi256_ps(idx), up));
            idx = _mm256_add_epi32(idx, step);
        }
        if (_mm256_movemask_ps(nan) || V < 8 || V > 0x7fffffff) {
            argmax_row_scalar(j, r);
            continue;
        }
        float lanes[8];
        int32_t at[8];
        _mm256_storeu_ps(lanes, top);
        _mm256_storeu_si256((__m256i *)at, best);
        argmax_finish(j, r, lanes, at, 8, i);
    }
}

/* ---- AVX2 panels: a block of rows decoded (widened) once into fp32 for every token (the CPUs without AVX-512) ---- */

#define F32_PANEL_ROWS 16 /* rows decoded at a time (16 x 2880 x 4 bytes = 180 KiB at gpt-oss's widest K: in L2) */
#define F32_PANEL_MIN_TOKENS 8 /* from this many tokens the AVX2 linear paths widen each block of rows once */
#define F32_PASS_TOKENS 48 /* tokens per pass over a block of rows (their x: 48 x 2880 x 4 bytes = 540 KiB at most) */
#define F32_PANEL_MAX_K 8192 /* a block of F32_PANEL_ROWS fp32 rows on the stack: at most 512 KiB */
#define TPANEL_TOKENS 6 /* tokens per register block of a transposed panel: 2 x 6 accumulators, 2 weight vectors */
#define TPANEL_PASS_TOKENS 192 /* tokens run against every block of a job's rows before the next: their x is read from
                                  the caches, not memory (2048 tokens of a [2048, 1024] expert: 72 GFLOP/s against 61
                                  with every token per block; Zen 1 EPYC, 2 threads) */

/* nr rows (1 or 2) times nt tokens (constants in each instance: nr * nt * 2 accumulators in registers, at most 12),
   each sum in matvec_avx2_n's order; two rows share each load of x (fp32 linear for fewer than F32_PANEL_MIN_TOKENS
   tokens, straight on the weight) */
__attribute__((target("avx2,fma"), always_inline)) static inline void f32panel_block(
    const float *w, int64_t K, const float *xs, float *out, int64_t R, const int nr, const int nt) {
    __m256 acc[2][3][2];
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < nt; t++) acc[i][t][0] = acc[i][t][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) /* vectors 0, 2 of a group into the first sum, 1, 3 into the second */
        for (int h = 0; h < 2; h++) {
            __m256 w0 = _mm256_load_ps(w + k + 8 * h), w1 = nr > 1 ? _mm256_load_ps(w + K + k + 8 * h) : w0;
            for (int t = 0; t < nt; t++) {
                __m256 x = _mm256_loadu_ps(xs + t * K + k + 8 * h);
                acc[0][t][h] = _mm256_fmadd_ps(w0, x, acc[0][t][h]);
                if (nr > 1) acc[1][t][h] = _mm256_fmadd_ps(w1, x, acc[1][t][h]);
            }
        }
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < nt; t++) out[t * R + i] = hsum_avx2(_mm256_add_ps(acc[i][t][0], acc[i][t][1]));
}

#define F32_BLOCK(nr, nt)                                                                                          \
    case nt: f32panel_block(w, K, x, o, R, nr, nt); break;

/* `rows` rows [rows, K] times n tokens: F32_PASS_TOKENS tokens a pass (their x stays in L2), in each pass pairs of
   rows, three tokens at a time */
__attribute__((target("avx2,fma"))) static void f32panel_tokens(const float *panel, int rows, int64_t K,
                                                               const float *xs, int64_t n, float *out, int64_t R) {
    for (int64_t t0 = 0; t0 < n; t0 += F32_PASS_TOKENS) {
        int64_t t1 = n - t0 < F32_PASS_TOKENS ? n : t0 + F32_PASS_TOKENS;
        for (int i = 0; i < rows; i += 2) {
            const float *w = panel + i * K;
            for (int64_t t = t0; t < t1; t += 3) {
                const float *x = xs + t * K;
                float *o = out + t * R + i;
                int nt = t1 - t < 3 ? (int)(t1 - t) : 3;
                if (rows - i >= 2) {
                    switch (nt) { F32_BLOCK(2, 1) F32_BLOCK(2, 2) default: f32panel_block(w, K, x, o, R, 2, 3); }
                } else {
                    switch (nt) { F32_BLOCK(1, 1) F32_BLOCK(1, 2) default: f32panel_block(w, K, x, o, R, 1, 3); }
                }
            }
        }
    }
}

/* A transposed panel holds F32_PANEL_ROWS rows as columns: pT[k * 16 + i] is row i's k-th value, so one vector load
   brings 8 rows' values at k and each x value is broadcast to them: no horizontal sums, 12 FMAs per 2 weight loads
   and 6 broadcasts (1.4-1.8x the 2 x 3 dot-product blocks on a Zen 1 EPYC at K 64-2880, one thread). */

/* r[i] (8 values of row i0 + i: its low lane's at k_lo .. k_lo + 3, its high lane's at k_hi .. k_hi + 3) into the
   transposed panel pT: in-lane unpacks and shuffles, then pT[(k_lo + l) * 16 + i0 ..] and pT[(k_hi + l) * 16 + i0 ..]
   = the 8 rows' value l of each lane, stored 128 bits at a time (a lane-crossing permute takes 8 micro-ops on Zen 1;
   rows past a block's tail: zero vectors) */
__attribute__((target("avx2,fma"))) static inline void tpanel_put8(float *pT, int64_t k_lo, int64_t k_hi, int i0,
                                                                  const __m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; h++) /* h = 0: rows 0-3, h = 1: rows 4-7 */
        for (int i = 0; i < 2; i++) {
            u[4 * h + 2 * i] = _mm256_shuffle_ps(t[4 * h + i], t[4 * h + 2 + i], 0x44);
            u[4 * h + 2 * i + 1] = _mm256_shuffle_ps(t[4 * h + i], t[4 * h + 2 + i], 0xEE);
        }
    for (int l = 0; l < 4; l++) {
        float *lo = pT + (k_lo + l) * F32_PANEL_ROWS + i0, *hi = pT + (k_hi + l) * F32_PANEL_ROWS + i0;
        _mm_store_ps(lo, _mm256_castps256_ps128(u[l]));
        _mm_store_ps(lo + 4, _mm256_castps256_ps128(u[4 + l]));
        _mm_store_ps(hi, _mm256_extractf128_ps(u[l], 1));
        _mm_store_ps(hi + 4, _mm256_extractf128_ps(u[4 + l], 1));
    }
}

/* the rows of the next block a panel fill prefetches, with `left` rows of W after its own block */
#define AHEAD(left) ((left) < 0 ? 0 : (left) < F32_PANEL_ROWS ? (int)(left) : F32_PANEL_ROWS)

/* `rows` rows of a bf16 W [.., K] (K a multiple of 8) from w into a transposed panel: rows i and i + 8 in one register
   (its two lanes), 8 values each, transposed as 16-bit words (3 rounds of unpacks: each register then holds one k's
   8 + 8 rows), then widened by interleaving with zeros (rows past `rows`: zero, as the panel's tail). The first
   `ahead` rows of the next block are prefetched as it goes, so they arrive while this block meets the tokens (a
   412 MB unembedding streams from memory: the greedy tokens of 8 rows 44 -> 47 GFLOP/s on the Zen 1 EPYC) */
__attribute__((target("avx2,fma"))) static inline void tpanel_fill_bf16(float *pT, const uint16_t *w, int64_t K,
                                                                       int rows, int ahead) {
    static const uint16_t none[8];
    const __m256i zero = _mm256_setzero_si256();
    for (int64_t k = 0; k < K; k += 8) {
        __m256i a[8], b[8];
        if (!(k & 31))
            for (int i = 0; i < ahead; i++) _mm_prefetch((const char *)(w + (F32_PANEL_ROWS + i) * K + k), _MM_HINT_T0);
        for (int i = 0; i < 8; i++)
            a[i] = _mm256_loadu2_m128i((const __m128i *)(i + 8 < rows ? w + (i + 8) * K + k : none),
                                       (const __m128i *)(i < rows ? w + i * K + k : none));
        for (int i = 0; i < 4; i++) { /* rows 2i, 2i + 1: b[2i] at k .. k + 3, b[2i + 1] at k + 4 .. k + 7 */
            b[2 * i] = _mm256_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
            b[2 * i + 1] = _mm256_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
        }
        for (int i = 0; i < 2; i++) /* rows 4i .. 4i + 3: a[4i + m] at k + 2m, k + 2m + 1 */
            for (int h = 0; h < 2; h++) {
                a[4 * i + 2 * h] = _mm256_unpacklo_epi32(b[4 * i + h], b[4 * i + 2 + h]);
                a[4 * i + 2 * h + 1] = _mm256_unpackhi_epi32(b[4 * i + h], b[4 * i + 2 + h]);
            }
        for (int m = 0; m < 4; m++) { /* all 8 rows: b[c] at k + c */
            b[2 * m] = _mm256_unpacklo_epi64(a[m], a[4 + m]);
            b[2 * m + 1] = _mm256_unpackhi_epi64(a[m], a[4 + m]);
        }
        for (int c = 0; c < 8; c++) {
            float *o = pT + (k + c) * F32_PANEL_ROWS;
            __m256 r03 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, b[c])); /* rows 0-3 | 8-11 */
            __m256 r47 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, b[c])); /* rows 4-7 | 12-15 */
            _mm_store_ps(o, _mm256_castps256_ps128(r03));
            _mm_store_ps(o + 4, _mm256_castps256_ps128(r47));
            _mm_store_ps(o + 8, _mm256_extractf128_ps(r03, 1));
            _mm_store_ps(o + 12, _mm256_extractf128_ps(r47, 1));
        }
    }
}

/* `rows` rows of an fp32 W [.., K] (K a multiple of 8) from w into a transposed panel */
__attribute__((target("avx2,fma"))) static inline void tpanel_fill_f32(float *pT, const float *w, int64_t K, int rows) {
    for (int i0 = 0; i0 < F32_PANEL_ROWS; i0 += 8)
        for (int64_t k = 0; k < K; k += 8) {
            __m256 v[8];
            for (int i = 0; i < 8; i++)
                v[i] = i0 + i < rows ? _mm256_loadu_ps(w + (i0 + i) * K + k) : _mm256_setzero_ps();
            tpanel_put8(pT, k, k + 4, i0, v);
        }
}

/* the panel's 16 rows times nt tokens (a constant in each instance), each sum over k in k's order; o [nt][ostride] */
__attribute__((target("avx2,fma"), always_inline)) static inline void tpanel_block(
    const float *pT, int64_t K, const float *xs, float *o, int64_t ostride, const int nt) {
    __m256 acc[TPANEL_TOKENS][2];
    for (int t = 0; t < nt; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        __m256 w0 = _mm256_load_ps(pT + k * F32_PANEL_ROWS), w1 = _mm256_load_ps(pT + k * F32_PANEL_ROWS + 8);
        for (int t = 0; t < nt; t++) {
            __m256 x = _mm256_broadcast_ss(xs + t * K + k);
            acc[t][0] = _mm256_fmadd_ps(w0, x, acc[t][0]);
            acc[t][1] = _mm256_fmadd_ps(w1, x, acc[t][1]);
        }
    }
    for (int t = 0; t < nt; t++) {
        _mm256_storeu_ps(o + t * ostride, acc[t][0]);
        _mm256_storeu_ps(o + t * ostride + 8, acc[t][1]);
    }
}

#define TPANEL_BLOCK(nt)                                                                                           \
    case nt: tpanel_block(pT, K, x, o, stride, nt); break;

/* `rows` rows of a transposed panel (F32_PANEL_ROWS columns, those past `rows` zero) times n tokens into out [n, R]
   (out at the block's first row), at most TPANEL_TOKENS tokens at a time; a token's sums do not depend on the others */
__attribute__((target("avx2,fma"))) static void tpanel_tokens(const float *pT, int rows, int64_t K, const float *xs,
                                                             int64_t n, float *out, int64_t R) {
    float tail[TPANEL_TOKENS * F32_PANEL_ROWS];
    int64_t groups = (n + TPANEL_TOKENS - 1) / TPANEL_TOKENS;
    for (int64_t t = 0, nt; t < n; t += nt, groups--) {
        const float *x = xs + t * K;
        float *o = rows == F32_PANEL_ROWS ? out + t * R : tail;
        int64_t stride = rows == F32_PANEL_ROWS ? R : F32_PANEL_ROWS;
        nt = (n - t + groups - 1) / groups; /* the tokens left evenly over the blocks left: 8 = 4 + 4, not 6 + 2 */
        switch ((int)nt) {
            TPANEL_BLOCK(1) TPANEL_BLOCK(2) TPANEL_BLOCK(3) TPANEL_BLOCK(4) TPANEL_BLOCK(5)
            default: tpanel_block(pT, K, x, o, stride, TPANEL_TOKENS);
        }
        for (int u = 0; rows < F32_PANEL_ROWS && u < nt; u++)
            memcpy(out + (t + u) * R, tail + u * F32_PANEL_ROWS, (size_t)rows * sizeof(float));
    }
}

/* bf16mv_avx2 for any number of tokens, K a multiple of 16: rows [r0, r1) F32_PANEL_ROWS at a time, each block
   widened once into a transposed panel and then run against every token, a pass of F32_PASS_TOKENS at a time into
   `sums` for the bias and the store */
__attribute__((target("avx2,fma"))) static void bf16panel_rows_avx2(const job_t *j) {
    const int64_t K = j->G;
    float panel[F32_PANEL_ROWS * K] __attribute__((aligned(32))), sums[F32_PASS_TOKENS * F32_PANEL_ROWS];
    for (int64_t p0 = 0; p0 < j->n; p0 += TPANEL_PASS_TOKENS)
    for (int64_t r = j->r0; r < j->r1; r += F32_PANEL_ROWS) {
        int rows = j->r1 - r < F32_PANEL_ROWS ? (int)(j->r1 - r) : F32_PANEL_ROWS;
        int64_t p1 = j->n - p0 < TPANEL_PASS_TOKENS ? j->n : p0 + TPANEL_PASS_TOKENS;
        tpanel_fill_bf16(panel, j->w + r * K, K, rows, AHEAD(j->r1 - r - F32_PANEL_ROWS));
        for (int64_t t0 = p0; t0 < p1; t0 += F32_PASS_TOKENS) {
            int64_t nt = p1 - t0 < F32_PASS_TOKENS ? p1 - t0 : F32_PASS_TOKENS;
            tpanel_tokens(panel, F32_PANEL_ROWS, K, j->xs + t0 * K, nt, sums, F32_PANEL_ROWS);
            for (int64_t t = 0; t < nt; t++)
                for (int i = 0; i < rows; i++) put_linear(j, t0 + t, r + i, sums[t * F32_PANEL_ROWS + i]);
        }
    }
}

/* out [n, R] fp32 = xs [n, K] times the fp32 rows [r0, r1) of j->wf (K a multiple of 16, rows 32-byte aligned),
   F32_PANEL_ROWS rows at a time: from F32_PANEL_MIN_TOKENS tokens each block copied into a transposed panel, for
   fewer the 2 x 3 dot-product blocks straight on the weight */
__attribute__((target("avx2,fma"))) static void f32linear_rows_avx2(const job_t *j) {
    const int64_t K = j->G;
    const int transpose = j->n >= F32_PANEL_MIN_TOKENS && K <= F32_PANEL_MAX_K;
    float panel[transpose ? F32_PANEL_ROWS * K : 8] __attribute__((aligned(32)));
    for (int64_t r = j->r0; r < j->r1; r += F32_PANEL_ROWS) {
        int rows = j->r1 - r < F32_PANEL_ROWS ? (int)(j->r1 - r) : F32_PANEL_ROWS;
        if (!transpose) {
            f32panel_tokens(j->wf + r * K, rows, K, j->xs, j->n, (float *)j->out + r, j->R);
            continue;
        }
        tpanel_fill_f32(panel, j->wf + r * K, K, rows);
        tpanel_tokens(panel, rows, K, j->xs, j->n, (float *)j->out + r, j->R);
    }
}

/* `rows` rows of an MXFP4 matrix (blocks [rows, G, 16], scales [rows, G]) decoded into a transposed panel, the values
   of a group in split order (as group_avx2 yields them: the same values). The bytes are transposed before the table
   lookup, so each lookup yields 8 rows of one column: rows i and i + 8 share a register (its two lanes); 3 rounds of
   byte, word and dword unpacks give column pairs, two vpshufb tables the bf16 bits, unpacks with zero the fp32
   values (rows past `rows`: zero bytes and scale, so +0) */
__attribute__((target("avx2,fma"))) static void tpanel_decode(float *pT, const uint8_t *blocks, const uint8_t *scales,
                                                             int64_t G, int rows) {
    const __m128i t0 = _mm_loadu_si128((const __m128i *)FP4_BF16), t1 = _mm_loadu_si128((const __m128i *)FP4_BF16 + 1);
    const __m128i byte = _mm_set1_epi16(255);
    const __m256i high = _mm256_broadcastsi128_si256(_mm_packus_epi16(_mm_srli_epi16(t0, 8), _mm_srli_epi16(t1, 8)));
    const __m256i low = _mm256_broadcastsi128_si256(_mm_packus_epi16(_mm_and_si128(t0, byte), _mm_and_si128(t1, byte)));
    const __m256i mask = _mm256_set1_epi8(15), zero = _mm256_setzero_si256();
    static const uint8_t none[16];
    float scale[G][F32_PANEL_ROWS] __attribute__((aligned(32))); /* rows 0-3, 8-11, 4-7, 12-15: the lanes' order */
    for (int i = 0; i < F32_PANEL_ROWS; i++) {
        int at = (i & 3) + (i & 8 ? 4 : 0) + (i & 4 ? 8 : 0);
        for (int64_t g = 0; g < G; g++) scale[g][at] = i < rows ? scale_of(scales[i * G + g]) : 0.0f;
    }
    for (int64_t g = 0; g < G; g++) {
        __m256i a[8], b[8];
        for (int i = 0; i < 8; i++) /* row i in the low lane, row i + 8 in the high one */
            a[i] = _mm256_loadu2_m128i((const __m128i *)(i + 8 < rows ? blocks + ((i + 8) * G + g) * 16 : none),
                                       (const __m128i *)(i < rows ? blocks + (i * G + g) * 16 : none));
        for (int i = 0; i < 4; i++) { /* bytes of rows 2i, 2i + 1 interleaved */
            b[2 * i] = _mm256_unpacklo_epi8(a[2 * i], a[2 * i + 1]);
            b[2 * i + 1] = _mm256_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
        }
        for (int i = 0; i < 2; i++) /* then of rows 4i .. 4i + 3: a[4i + m] holds bytes 4m .. 4m + 3 */
            for (int h = 0; h < 2; h++) {
                a[4 * i + 2 * h] = _mm256_unpacklo_epi16(b[4 * i + h], b[4 * i + 2 + h]);
                a[4 * i + 2 * h + 1] = _mm256_unpackhi_epi16(b[4 * i + h], b[4 * i + 2 + h]);
            }
        for (int m = 0; m < 4; m++) { /* of all 8 rows: b[2m], b[2m + 1] hold bytes 4m .. 4m + 1 and 4m + 2 .. + 3 */
            b[2 * m] = _mm256_unpacklo_epi32(a[m], a[4 + m]);
            b[2 * m + 1] = _mm256_unpackhi_epi32(a[m], a[4 + m]);
        }
        const __m256 s03 = _mm256_load_ps(scale[g]), s47 = _mm256_load_ps(scale[g] + 8);
        for (int c = 0; c < 8; c++) /* b[c]: bytes 2c and 2c + 1 of the 8 rows */
            for (int h = 0; h < 2; h++) { /* the low nibbles: columns 2c, 2c + 1; the high ones: 16 + 2c, .. */
                __m256i codes = h ? _mm256_and_si256(_mm256_srli_epi16(b[c], 4), mask) : _mm256_and_si256(b[c], mask);
                __m256i hb = _mm256_shuffle_epi8(high, codes), lb = _mm256_shuffle_epi8(low, codes);
                __m256i words[2] = {_mm256_unpacklo_epi8(lb, hb), _mm256_unpackhi_epi8(lb, hb)};
                for (int q = 0; q < 2; q++) {
                    float *o = pT + (g * 32 + 16 * h + 2 * c + q) * F32_PANEL_ROWS;
                    __m256 r03 = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, words[q])), s03);
                    __m256 r47 = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, words[q])), s47);
                    _mm_store_ps(o, _mm256_castps256_ps128(r03));
                    _mm_store_ps(o + 4, _mm256_castps256_ps128(r47));
                    _mm_store_ps(o + 8, _mm256_extractf128_ps(r03, 1));
                    _mm_store_ps(o + 12, _mm256_extractf128_ps(r47, 1));
                }
            }
    }
}

/* matvec_avx2 for any number of tokens: rows [r0, r1) F32_PANEL_ROWS at a time, each block decoded once (split
   order, as group_avx2 yields it, the order of xs) into a transposed panel and then run against every token */
__attribute__((target("avx2,fma"))) static void f32panel_rows_avx2(const job_t *j) {
    const int64_t G = j->G, K = G * 32;
    float panel[F32_PANEL_ROWS * K] __attribute__((aligned(32)));
    float *out = j->out;
    for (int64_t t0 = 0; t0 < j->n; t0 += TPANEL_PASS_TOKENS)
    for (int64_t r = j->r0; r < j->r1; r += F32_PANEL_ROWS) {
        int rows = j->r1 - r < F32_PANEL_ROWS ? (int)(j->r1 - r) : F32_PANEL_ROWS;
        int64_t nt = j->n - t0 < TPANEL_PASS_TOKENS ? j->n - t0 : TPANEL_PASS_TOKENS;
        tpanel_decode(panel, j->blocks + r * G * 16, j->scales + r * G, G, rows);
        tpanel_tokens(panel, rows, K, j->xs + t0 * K, nt, out + t0 * j->R + r, j->R);
    }
}

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

/* AVX512-BF16: 32 weights and 32 inputs per vdpbf16ps (pairs multiplied and summed into fp32 lanes), two chains a
   token; one row at a time, so the weight is read as one sequential stream: two rows' interleaved streams (with or
   without software prefetch) read a 412 MB unembedding at 17-20 GB/s on a Zen 4 VM (2 threads), one row at a time
   27-38 (the same sums, the same bits) */
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void bf16dp_n(const job_t *j, const int n) {
    int64_t K = j->G, body = K / 64 * 64;
    for (int64_t r = j->r0; r < j->r1; r++) {
        const uint16_t *w = j->w + r * K;
        __m512 acc[MAX_TOKENS][2];
        for (int t = 0; t < n; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
        for (int64_t k = 0; k < body; k += 64) {
            __m512bh a0 = (__m512bh)_mm512_loadu_si512(w + k), a1 = (__m512bh)_mm512_loadu_si512(w + k + 32);
            for (int t = 0; t < n; t++) {
                const uint16_t *x = j->xb + t * K + k;
                acc[t][0] = _mm512_dpbf16_ps(acc[t][0], a0, (__m512bh)_mm512_loadu_si512(x));
                acc[t][1] = _mm512_dpbf16_ps(acc[t][1], a1, (__m512bh)_mm512_loadu_si512(x + 32));
            }
        }
        for (int t = 0; t < n; t++) {
            float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
            for (int64_t i = body; i < K; i++) s += widen(w[i]) * widen(j->xb[t * K + i]);
            put_linear(j, t, r, s);
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
        argmax_finish(j, r, lanes, at, 16, i);
    }
}
#endif

/* ---- dispatch and threads ---- */

#define CHUNK_WEIGHT_BYTES (128 << 10) /* by_chunks: a block of rows this big serves every token while in L2 */

/* matvec and bf16mv over any number of tokens, MAX_TOKENS per pass: the rows in blocks of CHUNK_WEIGHT_BYTES, each
   block run against every token before the next (a weight read from memory once, not once per MAX_TOKENS tokens) */
static void by_chunks(const job_t *j) {
    int64_t K = j->w ? j->G : j->G * 32, size = j->bf16 ? 2 : 4, row_bytes = j->w ? K * 2 : j->G * 17;
    int64_t block = j->n <= MAX_TOKENS ? j->r1 - j->r0 : CHUNK_WEIGHT_BYTES / row_bytes + 1;
    for (int64_t r = j->r0; r < j->r1; r += block)
        for (int64_t t = 0; t < j->n; t += MAX_TOKENS) {
            job_t part = *j;
            part.r0 = r;
            part.r1 = j->r1 - r < block ? j->r1 : r + block;
            part.n = j->n - t < MAX_TOKENS ? j->n - t : MAX_TOKENS;
            if (part.xs) part.xs += t * K;
            if (part.xb) part.xb += t * K;
            part.out = (char *)j->out + t * j->R * size;
            j->inner(&part);
        }
}

typedef void (*kernel_t)(const job_t *);

static int amx_granted(void) { /* cpuid has AMX-TILE and AMX-BF16, and Linux grants this process the tile data */
#if defined(GPTOSS_X86) && defined(__linux__) && defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if (!((d >> 24) & 1) || !((d >> 22) & 1)) return 0;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
#else
    return 0;
#endif
}

static int isa(void) { /* 4: AMX (and AVX-512 with BF16), 3: AVX-512 with BF16, 2: AVX-512, 1: AVX2+FMA, 0: scalar */
#ifdef GPTOSS_X86
    static int amx = -1;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16")) {
        if (amx < 0) amx = amx_granted();
        return amx ? 4 : 3;
    }
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
    static const kernel_t avx2[] = {decode_avx2, matvec_avx2, bf16mv_avx2, argmax_avx2};
    static const kernel_t avx512[] = {decode_avx512, matvec_avx512, bf16mv_avx512, argmax_avx512};
    static const kernel_t avx512bf16[] = {decode_avx512, matvec_avx512, bf16mv_avx512bf16, argmax_avx512};
    if (level >= 3) return avx512bf16[kind];
    if (level == 2) return avx512[kind];
    if (level == 1) return avx2[kind];
#endif
    (void)level;
    return scalar[kind];
}

#define MAX_THREADS 64

typedef void (*part_fn)(const void *shared, int i, int n); /* does part i of n of the work `shared` describes */

static inline int64_t share_at(int64_t lo, int64_t hi, int i, int n) { /* where part i of [lo, hi) in n starts */
    return lo + (hi - lo) * i / n;
}

/* ---- worker threads, started once and reused (starting and joining threads per call cost more than a decode step's
   small matvecs gain from them: the larger checkpoint's MoE of one token took 1.19 ms on 2 threads, 0.78 on one) ----

   parallel(n, fn, shared) runs fn(shared, i, n) for the parts i = 0 .. n-1 (each takes its share_at), part 0 on the
   caller, the others on pool workers that wait for the next call a short while (POOL_SPIN), then sleep on a condition variable. One caller uses the pool at a time; another one
   meanwhile (a second Python thread) starts threads of its own, as every call did before. A forked child starts a
   pool of its own (the parent's workers do not exist there). */
static pthread_mutex_t pool_user = PTHREAD_MUTEX_INITIALIZER; /* held by the caller whose parts the pool runs */
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;   /* guards everything below */
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER, pool_idle = PTHREAD_COND_INITIALIZER;
static int pool_started, pool_workers, pool_count, pool_busy; /* workers running; in this round; its parts; still in it */
static unsigned long pool_round, pool_seen[MAX_THREADS]; /* rounds posted; the round a worker last took */
static part_fn pool_fn;
static const void *pool_shared;
static pthread_once_t pool_fork_once = PTHREAD_ONCE_INIT;

#define POOL_SPIN 4000 /* pauses (~0.1 ms) a worker waits for the next round, and the caller for the workers, before
                          sleeping: waking a virtual CPU that went idle costs more than a small matvec */

static inline void pause_once(void) {
#ifdef GPTOSS_X86
    _mm_pause();
#endif
}

static void *pool_worker(void *arg) {
    int i = (int)(intptr_t)arg;
    pthread_mutex_lock(&pool_mu);
    for (;;) {
        unsigned long seen = pool_seen[i];
        pthread_mutex_unlock(&pool_mu);
        for (int k = 0; k < POOL_SPIN && __atomic_load_n(&pool_round, __ATOMIC_ACQUIRE) == seen; k++) pause_once();
        pthread_mutex_lock(&pool_mu);
        while (pool_round == pool_seen[i]) pthread_cond_wait(&pool_wake, &pool_mu);
        pool_seen[i] = pool_round;
        if (i > pool_workers) continue; /* not needed this round */
        part_fn fn = pool_fn;
        const void *shared = pool_shared;
        int n = pool_count;
        pthread_mutex_unlock(&pool_mu);
        fn(shared, i, n);
        pthread_mutex_lock(&pool_mu);
        if (__atomic_sub_fetch(&pool_busy, 1, __ATOMIC_ACQ_REL) == 0) pthread_cond_signal(&pool_idle);
    }
    return NULL;
}

static void pool_after_fork(void) { /* in the child: no workers, every lock free */
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    pool_user = pool_mu = m;
    pool_wake = pool_idle = c;
    pool_started = pool_workers = pool_count = pool_busy = 0;
}

static void pool_fork_handler(void) { pthread_atfork(NULL, NULL, pool_after_fork); }

typedef struct {
    part_fn fn;
    const void *shared;
    int i, n;
} spawned_t;

static void *spawned_part(void *arg) {
    const spawned_t *p = arg;
    p->fn(p->shared, p->i, p->n);
    return NULL;
}

static void spawn_parts(int n, part_fn fn, const void *shared) { /* threads of its own for parts 1 .. n-1 */
    pthread_t ids[MAX_THREADS];
    spawned_t parts[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int i = 1; i < n; i++) {
        parts[i] = (spawned_t){fn, shared, i, n};
        started[i] = pthread_create(&ids[i], NULL, spawned_part, &parts[i]) == 0;
    }
    fn(shared, 0, n);
    for (int i = 1; i < n; i++) {
        if (started[i])
            pthread_join(ids[i], NULL);
        else
            fn(shared, i, n); /* no thread to be had: this one does the share */
    }
}

static void parallel(int n, part_fn fn, const void *shared) {
    if (n > MAX_THREADS) n = MAX_THREADS;
    if (n < 2) {
        fn(shared, 0, 1);
        return;
    }
    pthread_once(&pool_fork_once, pool_fork_handler);
    if (pthread_mutex_trylock(&pool_user) != 0) {
        spawn_parts(n, fn, shared);
        return;
    }
    pthread_mutex_lock(&pool_mu);
    while (pool_started < n - 1) {
        pthread_t id;
        int i = pool_started + 1;
        pool_seen[i] = pool_round; /* it takes the rounds posted from now on */
        if (pthread_create(&id, NULL, pool_worker, (void *)(intptr_t)i) != 0) break;
        pthread_detach(id);
        pool_started++;
    }
    int workers = pool_started < n - 1 ? pool_started : n - 1;
    pool_fn = fn;
    pool_shared = shared;
    pool_workers = workers;
    pool_count = n;
    __atomic_store_n(&pool_busy, workers, __ATOMIC_RELEASE);
    __atomic_store_n(&pool_round, pool_round + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool_wake);
    pthread_mutex_unlock(&pool_mu);
    fn(shared, 0, n);
    for (int i = workers + 1; i < n; i++) fn(shared, i, n); /* parts no worker could be started for */
    for (int k = 0; k < POOL_SPIN && __atomic_load_n(&pool_busy, __ATOMIC_ACQUIRE) > 0; k++) pause_once();
    pthread_mutex_lock(&pool_mu);
    while (pool_busy > 0) pthread_cond_wait(&pool_idle, &pool_mu);
    pthread_mutex_unlock(&pool_mu);
    pthread_mutex_unlock(&pool_user);
}

#define MIN_THREAD_BYTES (256 << 10) /* a thread's start (tens of microseconds) pays for itself past this much work */

static int64_t rows_per_thread(int64_t row_bytes, int64_t floor) { /* MIN_THREAD_BYTES and `floor` rows at least */
    int64_t rows = MIN_THREAD_BYTES / (row_bytes > 0 ? row_bytes : 1);
    return rows > floor ? rows : floor;
}

static int parts_for(int64_t rows, int threads, int64_t min_rows) { /* min_rows: per part, at least */
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > rows / min_rows) threads = (int)(rows / min_rows); /* a thread's start-up is worth that much */
    return threads > 1 ? threads : 1;
}

/* a kernel's job ready to run: the parts its rows are worth (parts_for), and what it owns (the tokens packed for
   the kernel, freed by task_free) */
typedef struct {
    kernel_t fn;
    job_t job;
    int parts;
    void *owned;
} task_t;

typedef struct {
    const task_t *tasks;
    int count;
} tasks_t;

static void tasks_part(const void *shared, int i, int n) { /* each task's rows [r0, r1) split between its parts; a
                                                              task of one part goes to part k % n */
    const tasks_t *ts = shared;
    for (int k = 0; k < ts->count; k++) {
        const task_t *t = ts->tasks + k;
        int parts = t->parts < n ? t->parts : n;
        if (parts == 1 ? i != k % n : i >= parts) continue;
        job_t part = t->job;
        part.r0 = share_at(t->job.r0, t->job.r1, i % parts, parts);
        part.r1 = share_at(t->job.r0, t->job.r1, i % parts + 1, parts);
        t->fn(&part);
    }
}

static void run_tasks(const task_t *tasks, int count, int threads) { /* all of them in one parallel region: as many
                                                                         parts as the largest task's, or as the tasks */
    int parts = count < threads ? count : threads;
    for (int k = 0; k < count; k++) parts = tasks[k].parts > parts ? tasks[k].parts : parts;
    tasks_t ts = {tasks, count};
    parallel(parts, tasks_part, &ts);
}

static void task_free(task_t *t) {
    free(t->owned);
    t->owned = NULL;
}

static void run(kernel_t fn, job_t job, int threads, int64_t min_rows) {
    task_t task = {fn, job, parts_for(job.r1 - job.r0, threads, min_rows), NULL};
    run_tasks(&task, 1, threads);
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
    job_t job = {blocks, scales, G, 0, R, out, NULL, 0, R, bf16, NULL, NULL, NULL, NULL, NULL};
    run(pick(DECODE), job, threads, rows_per_thread(G * 16, 16));
}

static void mv_task(const float *xs, int64_t n, const uint8_t *blocks, const uint8_t *scales, int64_t R, int64_t G,
                    float *out, int bf16_valued, int threads, task_t *t);
#define AMX_MIN_TOKENS 4 /* a matrix times this many tokens or more goes through AMX when they are bf16 values (the
                            fused AVX-512 path is faster for fewer: one token of a [2048, 1024] W1 143 us against 223) */
#define PANEL_MIN_TOKENS 12 /* the same for AVX512-BF16 panels (12 tokens of a [2048, 1024] W1: 0.38 ms against 0.42;
                              8: 0.30 against 0.33; [1024, 1024] at 8: 0.24 against 0.18, 2026-12-02, AMD EPYC, 2 threads) */
static int decoded_min_tokens(void) { return gptoss_mxfp4_isa() >= 4 ? AMX_MIN_TOKENS : PANEL_MIN_TOKENS; }

int gptoss_mxfp4_matvec(const float *xs, int64_t n, const uint8_t *blocks, const uint8_t *scales, int64_t R,
                        int64_t G, float *out, int bf16_valued, int threads) {
    if (n < 1) return -1;
    task_t task;
    mv_task(xs, n, blocks, scales, R, G, out, bf16_valued, threads, &task);
    run_tasks(&task, 1, threads);
    task_free(&task);
    return 0;
}

#ifdef GPTOSS_X86
static int bgreedy_linear(const uint16_t *x, int64_t n, const uint16_t *w, const uint16_t *bias, int64_t R, int64_t K,
                          void *out, int out_bf16, int threads);
#endif
#define BLINEAR_MIN_TOKENS 9 /* on AVX512-BF16 without AMX from this many tokens of a weight of BLINEAR_MIN_ROWS rows or */
#define BLINEAR_MIN_ROWS 64 /* more bgreedy_linear (by_chunks as fast or faster below: kernels.DP_LINEAR_MAX_TOKENS) */

int gptoss_bf16_matvec(const uint16_t *xb, int64_t n, const uint16_t *w, const uint16_t *bias, int64_t R, int64_t K,
                       void *out, int out_bf16, int threads) {
    if (n < 1) return -1;
#ifdef GPTOSS_X86
    if (gptoss_mxfp4_isa() == 3 && n >= BLINEAR_MIN_TOKENS && R >= BLINEAR_MIN_ROWS && K % 32 == 0 && R < 0x7fffffff &&
        !bgreedy_linear(xb, n, w, bias, R, K, out, out_bf16, threads))
        return 0;
#endif
    float *xs = NULL;
    if (gptoss_mxfp4_isa() < 3) { /* the widening paths read x as fp32 */
        xs = malloc((size_t)(n * K) * sizeof(float));
        if (xs == NULL) return -2;
        for (int64_t i = 0; i < n * K; i++) xs[i] = widen(xb[i]);
    }
    job_t job = {NULL, NULL, K, 0, R, out, xs, n, R, out_bf16, w, xb, bias, pick(BF16MV), NULL};
#ifdef GPTOSS_X86
    if (gptoss_mxfp4_isa() == 1 && n >= F32_PANEL_MIN_TOKENS && K % 16 == 0 && K <= F32_PANEL_MAX_K) {
        run(bf16panel_rows_avx2, job, threads, rows_per_thread(K * 2, F32_PANEL_ROWS));
        free(xs);
        return 0;
    }
#endif
    run(by_chunks, job, threads, rows_per_thread(K * 2 * ((n + MAX_TOKENS - 1) / MAX_TOKENS), 16));
    free(xs);
    return 0;
}

/* out [n, R] fp32 = x [n, K] @ w.T for fp32 w [R, K] on AVX2: 0, or -1 where this kernel does not run (another CPU,
   K not a multiple of 16, w not 32-byte aligned: the caller takes its GEMM) */
int gptoss_f32_linear(const float *x, int64_t n, const float *w, int64_t R, int64_t K, float *out, int threads) {
#ifdef GPTOSS_X86
    if (n < 1 || gptoss_mxfp4_isa() != 1 || K % 16 || ((uintptr_t)w & 31)) return -1;
    job_t job = {NULL, NULL, K, 0, R, out, x, n, R, 0, NULL, NULL, NULL, NULL, w};
    run(f32linear_rows_avx2, job, threads, rows_per_thread(K * 4, F32_PANEL_ROWS));
    return 0;
#else
    (void)x, (void)n, (void)w, (void)R, (void)K, (void)out, (void)threads;
    return -1;
#endif
}

void gptoss_argmax(const void *rows, int bf16, int64_t n, int64_t V, int64_t *out, int threads) {
    job_t job = {NULL, NULL, V, 0, n, out, bf16 ? NULL : rows, n, n, 0, NULL, bf16 ? rows : NULL, NULL, NULL, NULL};
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

/* exp(x) for x <= 88 (here a score minus the row's largest: x <= 0), within 2 ulp of exp down to -87, where it stays (expf gives
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

/* the scores p [N] -> their softmax with the sink in the denominator, in place */
static inline void softmax_sink(float *p, int64_t N, float sink) {
    float m = sink, sum = 0.0f;
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

static int attend_bf16_64(const attn_t *a); /* the AVX512-BF16 path for a bf16 cache and head_dim 64: 0, or -1 */
static int attend_avx2_64(const attn_t *a); /* the AVX2 path for head_dim 64: 0, or -1 */

__attribute__((target_clones("avx512f", "avx2", "default"))) static void attend_items(const attn_t *a) {
    if (attend_bf16_64(a) == 0 || attend_avx2_64(a) == 0) return;
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
        for (int64_t g = 0; g < G; g++) softmax_sink(sc + g * N, N, a->sinks[h * G + g]);
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

static void attend_part(const void *shared, int i, int n) { /* the items [item0, item1) split between the parts */
    attn_t part = *(const attn_t *)shared;
    part.item0 = share_at(((const attn_t *)shared)->item0, ((const attn_t *)shared)->item1, i, n);
    part.item1 = share_at(((const attn_t *)shared)->item0, ((const attn_t *)shared)->item1, i + 1, n);
    attend_items(&part);
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
    parallel(threads, attend_part, &base);
}

/* ---- AMX: MXFP4 rows decoded into bf16 tiles (16 rows x one scale group), times up to 64 tokens per pass ---- */

#define AMX_CHUNKS 4 /* token tiles of 16 per pass over a row block's decoded weights: tmm0-3 accumulate */

#ifdef GPTOSS_X86
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg_t;

/* tmm0-5 as 16 rows of 64 bytes (C tiles of 16 x 16 fp32, A and B tiles of 16 x 32 bf16); _tile_release after */
__attribute__((target("amx-tile"))) static void amx_configure(void) {
    tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 6; i++) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = 16;
    }
    _tile_loadconfig(&cfg);
}

/* The A tiles of a row block: pairs of scale groups (g = 2p, 2p + 1), each pair two tiles, "low" with the even
   elements of both groups (columns 0-15 group 2p, 16-31 group 2p + 1) and "high" with the odd ones: how the packed
   bytes hold them (low nibble, high nibble), so a pair decodes with no shuffle. A phantom group past an odd G is zero.
   The x side (amx_pack_x) puts the same elements in the same columns: tile q, column c holds split-order k =
   (2 * (q / 2) + c / 16) * 32 + (q % 2) * 16 + c % 16. */

/* xs [n, G * 32] fp32 in split order, bf16-valued -> [ceil(n / 16)][Q tiles][16 pairs][16 tokens][2] bf16 (the B
   tiles: k pairs side by side, as tdpbf16ps takes them), zero past the last token and in a phantom group. Per token
   and tile: 16 values of each of the two groups (contiguous in xs), truncated to bf16 (exact), their 16 pairs
   scattered a tile row (64 bytes) apart */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static uint16_t *amx_pack_x(const float *xs, int64_t n, int64_t G) {
    int64_t chunks = (n + 15) / 16, K = G * 32, Q = (G + 1) / 2 * 2;
    uint16_t *v = calloc((size_t)(chunks * Q * 512), sizeof(uint16_t));
    if (v == NULL) return NULL;
    const __m512i rows = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
    for (int64_t t = 0; t < n; t++)
        for (int64_t q = 0; q < Q; q++) {
            int64_t g = q / 2 * 2, half = q % 2;
            const float *x = xs + t * K + g * 32 + half * 16;
            __m256i first = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(x)), 16));
            __m256i second = _mm256_setzero_si256();
            if (g + 1 < G)
                second = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(x + 32)), 16));
            __m512i pairs = _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1); /* columns 0-31 */
            int32_t *tile = (int32_t *)(v + ((t / 16) * Q + q) * 512) + t % 16;
            _mm512_i32scatter_epi32(tile, rows, pairs, 4);
        }
    return v;
}

#define AMX_DP(c)                                                                                                  \
    case c:                                                                                                        \
        _tile_loadd(5, xv + ((c0 + c) * Q + q) * 512, 64);                                                          \
        _tile_dpbf16ps(c, 4, 5);                                                                                   \
        break;
#define AMX_STORE(c)                                                                                               \
    case c:                                                                                                        \
        _tile_stored(c, cbuf, 64);                                                                                 \
        break;


/* one row's pair p of scale groups -> its 32 low and 32 high bf16 values: the E2M1 codes through a 16-bit table
   (vpermw) to the bf16 of the value, then the scale's power of two added to the exponent field of every nonzero
   code (exact for scales in [2, 252]: exponent_add_ok). e: the pair's exponent offsets, 16 lanes each */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline void amx_decode_pair(const uint8_t *b, int two, __m512i e,
                                                                               uint16_t *lo_out, uint16_t *hi_out) {
    const __m512i lut = _mm512_loadu_si512(FP4_BF16);
    const __m512i fifteen = _mm512_set1_epi16(15), seven = _mm512_set1_epi16(7);
    __m256i raw = two ? _mm256_loadu_si256((const __m256i *)b) : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)b));
    __m512i w = _mm512_cvtepu8_epi16(raw);
    __m512i lo = _mm512_and_si512(w, fifteen), hi = _mm512_srli_epi16(w, 4);
    __m512i vlo = _mm512_permutexvar_epi16(lo, lut), vhi = _mm512_permutexvar_epi16(hi, lut);
    _mm512_store_si512(lo_out, _mm512_mask_add_epi16(vlo, _mm512_test_epi16_mask(lo, seven), vlo, e));
    _mm512_store_si512(hi_out, _mm512_mask_add_epi16(vhi, _mm512_test_epi16_mask(hi, seven), vhi, e));
}

/* a row's pairs of groups decoded into the A tiles' row i: the scales of 32 groups at a time widened to 16-bit
   exponent offsets once, each pair's two picked out by one vpermw */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline void amx_decode_row(const uint8_t *b, const uint8_t *s,
                                                                              int64_t G, uint16_t *a, int64_t i) {
    const __m512i bias = _mm512_set1_epi16(127), first = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0x10001, 0x10001,
                                                                              0x10001, 0x10001, 0x10001, 0x10001,
                                                                              0x10001, 0x10001);
    for (int64_t g0 = 0; g0 < G; g0 += 32) {
        int64_t left = G - g0 < 32 ? G - g0 : 32;
        __m256i raw = _mm256_maskz_loadu_epi8(left >= 32 ? 0xFFFFFFFFu : (1u << left) - 1, s + g0);
        __m512i offsets = _mm512_slli_epi16(_mm512_sub_epi16(_mm512_cvtepu8_epi16(raw), bias), 7);
        for (int64_t g = g0; g < g0 + left; g += 2) {
            __m512i idx = _mm512_add_epi16(first, _mm512_set1_epi16((short)(g - g0))); /* g - g0: 16 lanes, g + 1 - g0 */
            __m512i e = _mm512_permutexvar_epi16(idx, offsets);
            amx_decode_pair(b + g * 16, g + 1 < G, e, a + (g * 16 + i) * 32, a + ((g + 1) * 16 + i) * 32);
        }
    }
}

/* out[t, r] = sum_k x[t, k] W[r, k] for the row blocks of 16 starting in [r0, r1): each block's rows decoded once
   into its A tiles (bf16, exact), then tdpbf16ps against every token tile, AMX_CHUNKS at a time (fp32 sums); xb holds
   amx_pack_x's tokens */
__attribute__((target("avx512f,avx512bw,avx512vl,amx-tile,amx-bf16"))) static void amx_rows(const job_t *j) {
    const int64_t G = j->G, Q = (G + 1) / 2 * 2, chunks = (j->n + 15) / 16;
    const uint16_t *xv = j->xb;
    uint16_t *a = aligned_alloc(64, (size_t)(Q * 1024)); /* [Q][16 rows][32] bf16 */
    float cbuf[256] __attribute__((aligned(64))); /* a C tile: [16 rows][16 tokens] */
    const __m512i column = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
    if (a == NULL) return; /* Q KiB: not expected to fail (the output then stays unwritten) */
    amx_configure();
    for (int64_t blk = (j->r0 + 15) / 16; blk < (j->r1 + 15) / 16; blk++) {
        int64_t r = blk * 16, rows = j->R - r < 16 ? j->R - r : 16;
        for (int64_t i = 0; i < 16; i++) {
            if (i < rows) {
                amx_decode_row(j->blocks + (r + i) * G * 16, j->scales + (r + i) * G, G, a, i);
            } else {
                for (int64_t q = 0; q < Q; q++) memset(a + (q * 16 + i) * 32, 0, 64);
            }
        }
        for (int64_t c0 = 0; c0 < chunks; c0 += AMX_CHUNKS) {
            int nc = chunks - c0 < AMX_CHUNKS ? (int)(chunks - c0) : AMX_CHUNKS;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t q = 0; q < Q; q++) {
                _tile_loadd(4, a + q * 512, 64);
                for (int c = 0; c < nc; c++) switch (c) {
                        AMX_DP(0)
                        AMX_DP(1)
                        AMX_DP(2)
                        AMX_DP(3)
                    }
            }
            for (int c = 0; c < nc; c++) {
                switch (c) {
                    AMX_STORE(0)
                    AMX_STORE(1)
                    AMX_STORE(2)
                    AMX_STORE(3)
                }
                for (int64_t tt = 0; tt < 16 && (c0 + c) * 16 + tt < j->n; tt++) /* a token's 16 rows: a column */
                    _mm512_mask_storeu_ps((float *)j->out + ((c0 + c) * 16 + tt) * j->R + r, (__mmask16)((1u << rows) - 1),
                                          _mm512_i32gather_ps(_mm512_add_epi32(column, _mm512_set1_epi32((int)tt)), cbuf, 4));
            }
        }
    }
    _tile_release();
    free(a);
}
#endif

/* ---- AVX512-BF16 without AMX: MXFP4 rows decoded once into bf16 panels, then vdpbf16ps against every token ---- */

#define PANEL_TOKENS 12 /* tokens per pass over a panel: 2 x 12 accumulators of 16 rows, 2 weight vectors */

/* A panel is 32 rows (two halves of 16) as [half][P = K / 2 pairs][16 rows] dwords: lane i of vector (half, p) is row
   16 * half + i's pair p (elements 2p and 2p + 1 as bf16, low and high half), what vdpbf16ps multiplies with a
   token's pair p broadcast to every lane, so a token's sums come out as 16 consecutive rows of its output. A packed
   byte holds one such pair, so a row's scale group decodes to one vector of its 16 pairs (panel_pairs), and the
   vectors of 16 rows transposed (transpose16_store) are the panel's 16 vectors of that group. The decode adds the
   scale to the exponent field as amx_decode_pair does: exact for scales in [2, 252] (exponent_add_ok). */

#ifdef GPTOSS_X86
static const int32_t FP4_BF16_32[16] = {0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080, 0x40C0,
                                        0x8000, 0xBF00, 0xBF80, 0xBFC0, 0xC000, 0xC040, 0xC080, 0xC0C0};

/* 16 packed bytes of a row's group -> 16 dwords (element 2j's bf16 in the low half, 2j + 1's in the high one) times
   the scale: the table's nonzero entries with e = (scale - 127) << 7 added to their exponent field first */
__attribute__((target("avx512f"))) static inline __m512i panel_pairs(const uint8_t *b, int32_t e) {
    const __m512i fifteen = _mm512_set1_epi32(15);
    __m512i lut = _mm512_loadu_si512(FP4_BF16_32);
    lut = _mm512_mask_add_epi32(lut, 0xFEFE, lut, _mm512_set1_epi32(e)); /* entries 0 and 8 are +-0 */
    __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b));
    __m512i vlo = _mm512_permutexvar_epi32(_mm512_and_si512(w, fifteen), lut);
    __m512i vhi = _mm512_permutexvar_epi32(_mm512_srli_epi32(w, 4), _mm512_slli_epi32(lut, 16));
    return _mm512_or_si512(vlo, vhi);
}

/* r[16] rows of 16 dwords -> column j at out + 16 j: dwords then qwords interleaved (c[4q + m], lane L: column 4L + m
   of rows 4q .. 4q + 3), then the 4 x 4 lanes of 128 bits */
__attribute__((target("avx512f"))) static inline void transpose16_store(const __m512i *r, uint32_t *out) {
    __m512i t[16], c[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int q = 0; q < 4; q++) {
        const __m512i *u = t + 4 * q;
        c[4 * q] = _mm512_unpacklo_epi64(u[0], u[2]);
        c[4 * q + 1] = _mm512_unpackhi_epi64(u[0], u[2]);
        c[4 * q + 2] = _mm512_unpacklo_epi64(u[1], u[3]);
        c[4 * q + 3] = _mm512_unpackhi_epi64(u[1], u[3]);
    }
    for (int m = 0; m < 4; m++) {
        __m512i s0 = _mm512_shuffle_i32x4(c[m], c[4 + m], 0x44), s1 = _mm512_shuffle_i32x4(c[m], c[4 + m], 0xEE);
        __m512i s2 = _mm512_shuffle_i32x4(c[8 + m], c[12 + m], 0x44), s3 = _mm512_shuffle_i32x4(c[8 + m], c[12 + m], 0xEE);
        _mm512_store_si512(out + m * 16, _mm512_shuffle_i32x4(s0, s2, 0x88));
        _mm512_store_si512(out + (4 + m) * 16, _mm512_shuffle_i32x4(s0, s2, 0xDD));
        _mm512_store_si512(out + (8 + m) * 16, _mm512_shuffle_i32x4(s1, s3, 0x88));
        _mm512_store_si512(out + (12 + m) * 16, _mm512_shuffle_i32x4(s1, s3, 0xDD));
    }
}

/* rows [r, r + rows) (rows <= 16; the lanes past them zero) -> one half of a panel, [G * 16][16] dwords. A whole
   half prefetches the same lines of the rows 32 further on (the next panel's) as it goes: an MoE's experts come from
   DRAM, 16 rows at a time 16 bytes each, and without it the prefetchers lost the 16 streams (a [2048, 1024] W1 from
   DRAM, 2 threads: 12-16 tokens 0.27-0.32 ms -> 0.25-0.29, 32 tokens 0.50 -> 0.44). Here, in dpf_rows and in
   bgreedy_block a prefetch may point past the matrix's end: harmless, a prefetch never faults */
__attribute__((target("avx512f"))) static void panel_decode(const uint8_t *blocks, const uint8_t *scales, int64_t G,
                                                            int64_t r, int rows, uint32_t *half) {
    __m512i v[16];
    const uint8_t *b = blocks + r * G * 16, *s = scales + r * G;
    if (rows == 16) { /* a constant count: the 16 vectors stay in registers */
        for (int64_t g = 0; g < G; g++) {
            if (!(g & 3)) /* a line holds 4 groups of a row */
                for (int i = 0; i < 16; i++) _mm_prefetch((const char *)b + ((i + 32) * G + g) * 16, _MM_HINT_T0);
            for (int i = 0; i < 16; i++) v[i] = panel_pairs(b + (i * G + g) * 16, ((int32_t)s[i * G + g] - 127) * 128);
            transpose16_store(v, half + g * 256);
        }
        return;
    }
    for (int i = rows; i < 16; i++) v[i] = _mm512_setzero_si512();
    for (int64_t g = 0; g < G; g++) {
        for (int i = 0; i < rows; i++) v[i] = panel_pairs(b + (i * G + g) * 16, ((int32_t)s[i * G + g] - 127) * 128);
        transpose16_store(v, half + g * 256);
    }
}

/* nt tokens (a constant in each instance: the accumulators stay in registers) times both halves of a panel, their
   sums stored to out[t, 0 .. 32) under the halves' row masks */
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void panel_tokens(
    const uint32_t *pa, const uint32_t *pb, const uint32_t *x, int64_t P, float *out, int64_t R, __mmask16 ma,
    __mmask16 mb, const int nt) {
    __m512 a[PANEL_TOKENS], b[PANEL_TOKENS];
    for (int t = 0; t < nt; t++) a[t] = b[t] = _mm512_setzero_ps();
    for (int64_t p = 0; p < P; p++) {
        __m512bh wa = (__m512bh)_mm512_load_si512(pa + p * 16), wb = (__m512bh)_mm512_load_si512(pb + p * 16);
        for (int t = 0; t < nt; t++) {
            __m512bh xv = (__m512bh)_mm512_set1_epi32((int)x[t * P + p]);
            a[t] = _mm512_dpbf16_ps(a[t], wa, xv);
            b[t] = _mm512_dpbf16_ps(b[t], wb, xv);
        }
    }
    for (int t = 0; t < nt; t++) {
        _mm512_mask_storeu_ps(out + t * R, ma, a[t]);
        _mm512_mask_storeu_ps(out + t * R + 16, mb, b[t]);
    }
}

#define PANEL_NT(c)                                                                                                \
    case c:                                                                                                        \
        panel_tokens(panel, pb, x + t0 * P, P, out + t0 * j->R + r, j->R, ma, mb, c);                               \
        break;

/* out[t, r] = sum_k x[t, k] W[r, k] for rows [r0, r1), 32 at a time: the panel decoded once, then every token
   PANEL_TOKENS at a time; j->xb holds the tokens' pairs (panel_pack_x) */
__attribute__((target("avx512f,avx512bf16"))) static void panel_rows(const job_t *j) {
    const int64_t G = j->G, P = G * 16;
    const uint32_t *x = (const uint32_t *)j->xb;
    float *out = j->out;
    uint32_t panel[P * 32] __attribute__((aligned(64))); /* on the stack: 184 KiB at gpt-oss's widest K (2880) */
    for (int64_t r = j->r0; r < j->r1; r += 32) {
        int ra = j->r1 - r < 16 ? (int)(j->r1 - r) : 16, rb = j->r1 - r - 16 < 16 ? (int)(j->r1 - r - 16) : 16;
        panel_decode(j->blocks, j->scales, G, r, ra, panel);
        const uint32_t *pb = panel;
        __mmask16 ma = (__mmask16)((1u << ra) - 1), mb = 0;
        if (rb > 0) {
            panel_decode(j->blocks, j->scales, G, r + 16, rb, panel + P * 16);
            pb = panel + P * 16;
            mb = (__mmask16)((1u << rb) - 1);
        }
        for (int64_t t0 = 0; t0 < j->n; t0 += PANEL_TOKENS) {
            switch (j->n - t0 < PANEL_TOKENS ? (int)(j->n - t0) : PANEL_TOKENS) {
                PANEL_NT(1)
                PANEL_NT(2)
                PANEL_NT(3)
                PANEL_NT(4)
                PANEL_NT(5)
                PANEL_NT(6)
                PANEL_NT(7)
                PANEL_NT(8)
                PANEL_NT(9)
                PANEL_NT(10)
                PANEL_NT(11)
                PANEL_NT(12)
            }
        }
    }
}

/* xs [n, G * 32] fp32 in split order, bf16-valued -> [n][G * 16] dwords, pair j of group g: element 2j (truncated to
   bf16: exact) in the low half, 2j + 1 in the high one */
__attribute__((target("avx512f"))) static uint32_t *panel_pack_x(const float *xs, int64_t n, int64_t G) {
    uint32_t *v = aligned_alloc(64, (size_t)((n * G * 64 + 63) / 64 * 64));
    if (v == NULL) return NULL;
    const __m512i top = _mm512_set1_epi32((int)0xffff0000u);
    for (int64_t i = 0; i < n * G; i++) {
        __m512i even = _mm512_srli_epi32(_mm512_loadu_si512(xs + i * 32), 16);
        __m512i odd = _mm512_and_si512(_mm512_loadu_si512(xs + i * 32 + 16), top);
        _mm512_store_si512(v + i * 16, _mm512_or_si512(even, odd));
    }
    return v;
}
#endif

static int exponent_add_ok(const uint8_t *scales, int64_t count) { /* every decoded value a normal bf16 */
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t i = 0; i < count; i++) bad |= (scales[i] < 2) | (scales[i] > 252);
    return !bad;
}

/* ---- AVX512-BF16, fewer tokens than the panels take: each 64 packed bytes (4 scale groups) decoded in registers,
   the E2M1 codes to bf16 bytes by vpshufb, then vdpbf16ps against every token and each group's sums scaled once ---- */

#define DPF_MAX_TOKENS (PANEL_MIN_TOKENS - 1)
#define DPF_AHEAD 4 /* rows ahead whose lines dpf_rows prefetches (a [2048, 1024] W1 from DRAM, 2 threads, 8-11 tokens:
                       0.22-0.31 ms -> 0.17-0.24; the same at 1-4) */

#ifdef GPTOSS_X86
static const uint8_t E2M1_BF16_HI[16] = {0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40,
                                         0x80, 0xBF, 0xBF, 0xBF, 0xC0, 0xC0, 0xC0, 0xC0}; /* FP4's bf16 high bytes */
static const uint8_t E2M1_BF16_LO[16] = {0x00, 0x00, 0x80, 0xC0, 0x00, 0x40, 0x80, 0xC0,
                                         0x00, 0x00, 0x80, 0xC0, 0x00, 0x40, 0x80, 0xC0}; /* and low bytes */

/* xs [n, G * 32] fp32 in split order, bf16 values -> [n][chunk of 4 groups][4 vectors][4 groups][8] bf16: vector q
   of a chunk holds in its 128-bit lane g that group's split-order values 8q .. 8q + 7 (how dpf_rows decodes the
   bytes: low nibbles of bytes 0-7, of 8-15, high nibbles of 0-7, of 8-15); groups past G zero */
__attribute__((target("avx512f"))) static uint16_t *dpf_pack_x(const float *xs, int64_t n, int64_t G) {
    int64_t C = (G + 3) / 4;
    uint16_t *v = calloc((size_t)(n * C * 128), sizeof(uint16_t));
    if (v == NULL) return NULL;
    for (int64_t t = 0; t < n; t++)
        for (int64_t g = 0; g < G; g++) { /* the group's 32 values truncated to their bf16 bits (exact), 8 to a q */
            const float *from = xs + (t * G + g) * 32;
            __m256i a = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(from)), 16));
            __m256i b = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(from + 16)), 16));
            uint16_t *to = v + (t * C + g / 4) * 128 + (g % 4) * 8;
            _mm_storeu_si128((__m128i *)to, _mm256_castsi256_si128(a));
            _mm_storeu_si128((__m128i *)(to + 32), _mm256_extracti128_si256(a, 1));
            _mm_storeu_si128((__m128i *)(to + 64), _mm256_castsi256_si128(b));
            _mm_storeu_si128((__m128i *)(to + 96), _mm256_extracti128_si256(b, 1));
        }
    return v;
}

/* rows [r0, r1) times n tokens (a constant in each instance: the accumulators stay in registers); the scale of each
   group as scale_of (2 ** -127 for 0), applied in fp32 to its 32 sums at once: exact, a power of two */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) static inline void dpf_rows_n(
        const job_t *j, const int n) {
    const int64_t G = j->G, C = (G + 3) / 4;
    const __m512i hi_t = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)E2M1_BF16_HI));
    const __m512i lo_t = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)E2M1_BF16_LO));
    const __m512i nibble = _mm512_set1_epi8(0x0F), subnormal = _mm512_set1_epi32(0x400000);
    const __m512i lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (int64_t r = j->r0; r < j->r1; r++) {
        const uint8_t *b = j->blocks + r * G * 16, *s = j->scales + r * G;
        __m512 acc[DPF_MAX_TOKENS];
        for (int t = 0; t < n; t++) acc[t] = _mm512_setzero_ps();
        for (int64_t c = 0; c < C; c++) {
            int64_t left = G - 4 * c;
            __m512i v;
            __m128i sc;
            _mm_prefetch((const char *)b + DPF_AHEAD * G * 16 + c * 64, _MM_HINT_T0);
            if (left >= 4) {
                int32_t four;
                memcpy(&four, s + 4 * c, 4);
                v = _mm512_loadu_si512(b + c * 64);
                sc = _mm_cvtsi32_si128(four);
            } else { /* the last 1-3 groups: no read past the row */
                v = _mm512_maskz_loadu_epi8((1ULL << (left * 16)) - 1, b + c * 64);
                sc = _mm_maskz_loadu_epi8((__mmask16)((1u << left) - 1), s + 4 * c);
            }
            __m512i lo = _mm512_and_si512(v, nibble), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
            __m512i lh = _mm512_shuffle_epi8(hi_t, lo), ll = _mm512_shuffle_epi8(lo_t, lo);
            __m512i oh = _mm512_shuffle_epi8(hi_t, hi), ol = _mm512_shuffle_epi8(lo_t, hi);
            __m512bh e0 = (__m512bh)_mm512_unpacklo_epi8(ll, lh), e1 = (__m512bh)_mm512_unpackhi_epi8(ll, lh);
            __m512bh o0 = (__m512bh)_mm512_unpacklo_epi8(ol, oh), o1 = (__m512bh)_mm512_unpackhi_epi8(ol, oh);
            __m512i sb = _mm512_permutexvar_epi32(lanes, _mm512_cvtepu8_epi32(sc));
            __m512 scale = _mm512_castsi512_ps(_mm512_mask_mov_epi32(
                _mm512_slli_epi32(sb, 23), _mm512_cmpeq_epi32_mask(sb, _mm512_setzero_si512()), subnormal));
            for (int t = 0; t < n; t++) {
                const uint16_t *x = j->xb + (t * C + c) * 128;
                __m512 p = _mm512_dpbf16_ps(_mm512_setzero_ps(), e0, (__m512bh)_mm512_loadu_si512(x));
                p = _mm512_dpbf16_ps(p, e1, (__m512bh)_mm512_loadu_si512(x + 32));
                p = _mm512_dpbf16_ps(p, o0, (__m512bh)_mm512_loadu_si512(x + 64));
                p = _mm512_dpbf16_ps(p, o1, (__m512bh)_mm512_loadu_si512(x + 96));
                acc[t] = _mm512_fmadd_ps(p, scale, acc[t]);
            }
        }
        for (int t = 0; t < n; t++) ((float *)j->out)[t * j->R + r] = _mm512_reduce_add_ps(acc[t]);
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void dpf_rows(const job_t *j) {
    switch (j->n) {
        case 1: dpf_rows_n(j, 1); break;
        case 2: dpf_rows_n(j, 2); break;
        case 3: dpf_rows_n(j, 3); break;
        case 4: dpf_rows_n(j, 4); break;
        case 5: dpf_rows_n(j, 5); break;
        case 6: dpf_rows_n(j, 6); break;
        case 7: dpf_rows_n(j, 7); break;
        case 8: dpf_rows_n(j, 8); break;
        case 9: dpf_rows_n(j, 9); break;
        case 10: dpf_rows_n(j, 10); break;
        default: dpf_rows_n(j, DPF_MAX_TOKENS); break;
    }
}
#endif

/* the task of bf16-valued x times the weights decoded once into bf16 for all the tokens: AMX tiles where the CPU has
   them, else AVX512-BF16 panels, where the scales allow (exponent_add_ok) and there are enough tokens to pay for the
   decode (decoded_min_tokens), and on AVX512-BF16 below that the bytes decoded in registers (dpf_rows, any scale):
   0, or -1 (not taken, or no memory for the packed tokens: the caller takes the fused path) */
static int decoded_task(const float *xs, int64_t n, const uint8_t *blocks, const uint8_t *scales, int64_t R, int64_t G,
                        float *out, int threads, task_t *t) {
#ifdef GPTOSS_X86
    int level = gptoss_mxfp4_isa();
    kernel_t fn;
    void *xv;
    int64_t min_rows;
    if (level == 3 && n <= DPF_MAX_TOKENS) { /* fewer tokens than the panels pay for: decoded in registers */
        fn = dpf_rows, xv = dpf_pack_x(xs, n, G), min_rows = rows_per_thread(G * 16 * n, 16);
    } else if (level < 3 || n < decoded_min_tokens() || !exponent_add_ok(scales, R * G)) {
        return -1;
    } else if (level == 3) {
        fn = panel_rows, xv = panel_pack_x(xs, n, G), min_rows = rows_per_thread(G * 16, 32);
    } else {
        fn = amx_rows, xv = amx_pack_x(xs, n, G), min_rows = rows_per_thread(G * 16, 16);
    }
    if (xv == NULL) return -1;
    job_t job = {blocks, scales, G, 0, R, out, NULL, n, R, 0, NULL, (const uint16_t *)xv, NULL, NULL, NULL};
    *t = (task_t){fn, job, parts_for(R, threads, min_rows), xv};
    return 0;
#else
    (void)xs, (void)n, (void)blocks, (void)scales, (void)R, (void)G, (void)out, (void)threads, (void)t;
    return -1;
#endif
}

/* ---- the MoE MLP for decode ---- */

static inline float bias_at(const void *bias, int bf16, int64_t i) {
    return bf16 ? widen(((const uint16_t *)bias)[i]) : ((const float *)bias)[i];
}

/* the task for out [n, R] = xs [n, G * 32] (split order) times the MXFP4 matrix: decoded_task for bf16-valued xs
   where it runs, else on AVX2 the fp32 panels for any number of tokens (tpanel_decode costs less than the fused decode
   even at one token: a [2048, 1024] W1 0.43 ms against 0.60, and each token's sums are its own, so an MoE's result
   does not depend on the batch), elsewhere the fused path */
static void mv_task(const float *xs, int64_t n, const uint8_t *blocks, const uint8_t *scales, int64_t R, int64_t G,
                    float *out, int bf16_valued, int threads, task_t *t) {
    if (bf16_valued && decoded_task(xs, n, blocks, scales, R, G, out, threads, t) == 0) return;
    job_t job = {blocks, scales, G, 0, R, out, xs, n, R, 0, NULL, NULL, NULL, pick(MATVEC), NULL};
#ifdef GPTOSS_X86
    if (gptoss_mxfp4_isa() == 1 && G * 32 <= F32_PANEL_MAX_K) {
        *t = (task_t){f32panel_rows_avx2, job, parts_for(R, threads, rows_per_thread(G * 16, F32_PANEL_ROWS)), NULL};
        return;
    }
#endif
    *t = (task_t){by_chunks, job, parts_for(R, threads, rows_per_thread(G * 16 * ((n + MAX_TOKENS - 1) / MAX_TOKENS), 16)),
                     NULL};
}

/* x [T, H] fp32, ids [T, K] (ids outside [0, E) are held by another rank: skipped), weights [T, K] fp32; w1 [E, 2I,
   H/32, 16] + scales [E, 2I, H/32], b1 [E, 2I]; w2 [E, H, I/32, 16] + scales [E, H, I/32], b2 [E, H]; biases fp32 or
   bf16. out [T, H] fp32 is added to. act_bf16: h, the SwiGLU and each expert's output rounded to bf16 (a bf16
   model's torch path holds them in bf16). Returns 0, or -1 when out of memory (out then partly written). */
static inline float as_act(float v, int act_bf16) { return act_bf16 ? widen(round_bf16(v)) : v; }

static inline float bf16_round(float v) { /* widen(round_bf16(v)) without a branch, so `omp simd` loops vectorize */
    union {
        float f;
        uint32_t u;
    } in = {v}, out;
    uint32_t nan = (in.u & 0x7fffffffu) > 0x7f800000u; /* NaN stays NaN (quiet) */
    out.u = (nan ? in.u | 0x400000u : in.u + 0x7fffu + ((in.u >> 16) & 1)) & 0xffff0000u;
    return out.f;
}

static inline float exp_clamped(float x) { /* exp_le0 for any sign: its method holds up to 88 (2^127) */
    return exp_le0(x < 88.0f ? x : 88.0f);
}

static inline float swiglu_one(float gate, float up, float limit, float alpha, int act_bf16) {
    if (act_bf16) { /* each step rounded, as the torch path's bf16 ops do */
        gate = bf16_round(gate);
        up = bf16_round(up);
    }
    gate = gate < limit ? gate : limit;
    up = up < -limit ? -limit : (up > limit ? limit : up);
    if (!act_bf16) return gate / (1.0f + exp_clamped(-alpha * gate)) * (up + 1.0f);
    float scaled = bf16_round(alpha * gate), sig = bf16_round(1.0f / (1.0f + exp_clamped(-scaled)));
    return bf16_round(bf16_round(gate * sig) * bf16_round(up + 1.0f));
}

#ifdef GPTOSS_X86
__attribute__((target("avx512f"))) static inline __m512 bf16_round16(__m512 v) { /* bf16_round, 16 lanes */
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), u, _mm512_set1_epi32(0x400000));
    return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u)));
}

__attribute__((target("avx512f"))) static inline __m512 exp_clamped16(__m512 x) { /* exp_clamped, 16 lanes */
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 t = _mm512_sub_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _mm512_set1_ps(0.5f));
    __m512 n = _mm512_add_ps(_mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), _mm512_set1_ps(1.0f));
    __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693145751953125f)));
    r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(1.428606765330187e-06f)));
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 720));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 120));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 24));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 6));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(0.5f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f));
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

/* swiglu_row for I a multiple of 16: swiglu_one's operations in the same order, 16 lanes at a time (a separate
   multiply and add, as the scalar code compiles them for the baseline ISA, which has no FMA) */
__attribute__((target("avx512f"))) static void swiglu_row16(const float *h, const float *b1, int64_t I, float limit,
                                                            float alpha, int act_bf16, float *v) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512 lim = _mm512_set1_ps(limit), nlim = _mm512_set1_ps(-limit), one = _mm512_set1_ps(1.0f);
    const __m512 a = _mm512_set1_ps(alpha), na = _mm512_set1_ps(-alpha), zero = _mm512_setzero_ps();
    for (int64_t c = 0; c < I; c += 16) {
        __m512 lo = _mm512_add_ps(_mm512_loadu_ps(h + 2 * c), _mm512_loadu_ps(b1 + 2 * c));
        __m512 hi = _mm512_add_ps(_mm512_loadu_ps(h + 2 * c + 16), _mm512_loadu_ps(b1 + 2 * c + 16));
        __m512 gate = _mm512_permutex2var_ps(lo, even, hi), up = _mm512_permutex2var_ps(lo, odd, hi);
        __m512 out;
        if (act_bf16) {
            gate = _mm512_min_ps(bf16_round16(gate), lim);
            up = _mm512_max_ps(_mm512_min_ps(bf16_round16(up), lim), nlim);
            __m512 scaled = bf16_round16(_mm512_mul_ps(a, gate));
            __m512 sig = bf16_round16(_mm512_div_ps(one, _mm512_add_ps(one, exp_clamped16(_mm512_sub_ps(zero, scaled)))));
            out = bf16_round16(_mm512_mul_ps(bf16_round16(_mm512_mul_ps(gate, sig)), bf16_round16(_mm512_add_ps(up, one))));
        } else {
            gate = _mm512_min_ps(gate, lim);
            up = _mm512_max_ps(_mm512_min_ps(up, lim), nlim);
            out = _mm512_mul_ps(_mm512_div_ps(gate, _mm512_add_ps(one, exp_clamped16(_mm512_mul_ps(na, gate)))),
                                _mm512_add_ps(up, one));
        }
        _mm512_storeu_ps(v + c, out);
    }
}

__attribute__((target("avx512f"))) static void add_weighted16(float *dst, const float *y, const float *b2, int64_t H,
                                                              float w, int act_bf16) {
    const __m512 weight = _mm512_set1_ps(w);
    for (int64_t c = 0; c < H; c += 16) {
        __m512 v = _mm512_add_ps(_mm512_loadu_ps(y + c), _mm512_loadu_ps(b2 + c));
        if (act_bf16) v = bf16_round16(v);
        _mm512_storeu_ps(dst + c, _mm512_add_ps(_mm512_loadu_ps(dst + c), _mm512_mul_ps(weight, v)));
    }
}
/* the AVX2 twins of bf16_round16, exp_clamped16, swiglu_row16 and add_weighted16: 8 lanes, the same operations */
__attribute__((target("avx2,fma"))) static inline __m256 bf16_round8(__m256 v) {
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan);
    return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32((int)0xffff0000u)));
}

__attribute__((target("avx2,fma"))) static inline __m256 exp_clamped8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 t = _mm256_sub_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _mm256_set1_ps(0.5f));
    __m256 n = _mm256_add_ps(_mm256_floor_ps(t), _mm256_set1_ps(1.0f));
    __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693145751953125f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(1.428606765330187e-06f)));
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 720));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 120));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 24));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 6));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(0.5f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

__attribute__((target("avx2,fma"))) static void swiglu_row8(const float *h, const float *b1, int64_t I, float limit,
                                                           float alpha, int act_bf16, float *v) {
    const __m256 lim = _mm256_set1_ps(limit), nlim = _mm256_set1_ps(-limit), one = _mm256_set1_ps(1.0f);
    const __m256 a = _mm256_set1_ps(alpha), na = _mm256_set1_ps(-alpha), zero = _mm256_setzero_ps();
    for (int64_t c = 0; c < I; c += 8) {
        __m256 lo = _mm256_add_ps(_mm256_loadu_ps(h + 2 * c), _mm256_loadu_ps(b1 + 2 * c));
        __m256 hi = _mm256_add_ps(_mm256_loadu_ps(h + 2 * c + 8), _mm256_loadu_ps(b1 + 2 * c + 8));
        /* gate (even) and up (odd) of 8 pairs: in-lane shuffles leave lanes [0 1 4 5 | 2 3 6 7], one 64-bit permute */
        __m256 gate = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
        __m256 up = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
        __m256 out;
        if (act_bf16) {
            gate = _mm256_min_ps(bf16_round8(gate), lim);
            up = _mm256_max_ps(_mm256_min_ps(bf16_round8(up), lim), nlim);
            __m256 scaled = bf16_round8(_mm256_mul_ps(a, gate));
            __m256 sig = bf16_round8(_mm256_div_ps(one, _mm256_add_ps(one, exp_clamped8(_mm256_sub_ps(zero, scaled)))));
            out = bf16_round8(_mm256_mul_ps(bf16_round8(_mm256_mul_ps(gate, sig)), bf16_round8(_mm256_add_ps(up, one))));
        } else {
            gate = _mm256_min_ps(gate, lim);
            up = _mm256_max_ps(_mm256_min_ps(up, lim), nlim);
            out = _mm256_mul_ps(_mm256_div_ps(gate, _mm256_add_ps(one, exp_clamped8(_mm256_mul_ps(na, gate)))),
                                _mm256_add_ps(up, one));
        }
        _mm256_storeu_ps(v + c, out);
    }
}

__attribute__((target("avx2,fma"))) static void add_weighted8(float *dst, const float *y, const float *b2, int64_t H,
                                                             float w, int act_bf16) {
    const __m256 weight = _mm256_set1_ps(w);
    for (int64_t c = 0; c < H; c += 8) {
        __m256 v = _mm256_add_ps(_mm256_loadu_ps(y + c), _mm256_loadu_ps(b2 + c));
        if (act_bf16) v = bf16_round8(v);
        _mm256_storeu_ps(dst + c, _mm256_add_ps(_mm256_loadu_ps(dst + c), _mm256_mul_ps(weight, v)));
    }
}

#endif

/* one token's h [2I] (+ b1 [2I] fp32) -> the clamped SwiGLU [I] (gate even, up odd), each step rounded to bf16 where
   act_bf16 (as the torch path's bf16 ops round: the same bits up to exp's last place in fp32) */
static void swiglu_row(const float *h, const float *b1, int64_t I, float limit, float alpha, int act_bf16, float *v) {
#ifdef GPTOSS_X86
    if (gptoss_mxfp4_isa() >= 2 && I % 16 == 0) {
        swiglu_row16(h, b1, I, limit, alpha, act_bf16, v);
        return;
    }
    if (gptoss_mxfp4_isa() == 1 && I % 8 == 0) {
        swiglu_row8(h, b1, I, limit, alpha, act_bf16, v);
        return;
    }
#endif
    for (int64_t c = 0; c < I; c++) v[c] = swiglu_one(h[2 * c] + b1[2 * c], h[2 * c + 1] + b1[2 * c + 1], limit, alpha,
                                                      act_bf16);
}

/* dst [H] += w * (y + b2), y + b2 rounded to bf16 where act_bf16 */
static void add_weighted(float *dst, const float *y, const float *b2, int64_t H, float w, int act_bf16) {
#ifdef GPTOSS_X86
    if (gptoss_mxfp4_isa() >= 2 && H % 16 == 0) {
        add_weighted16(dst, y, b2, H, w, act_bf16);
        return;
    }
    if (gptoss_mxfp4_isa() == 1 && H % 8 == 0) {
        add_weighted8(dst, y, b2, H, w, act_bf16);
        return;
    }
#endif
    for (int64_t c = 0; c < H; c++) dst[c] += w * (act_bf16 ? bf16_round(y[c] + b2[c]) : y[c] + b2[c]);
}

static void to_split(const float *src, int64_t K, float *dst) { /* a row of K in natural order -> split order */
    for (int64_t g = 0; g < K / 32; g++)
        for (int j = 0; j < 16; j++) {
            dst[g * 32 + j] = src[g * 32 + 2 * j];
            dst[g * 32 + 16 + j] = src[g * 32 + 2 * j + 1];
        }
}

/* the per-token steps of a pass of the MoE (one or more experts' assignments, grouped by expert), a part of them */
typedef struct {
    int stage; /* 0: the tokens' x rows in split order; 1: h + b1, the SwiGLU, in split order; 2: y + b2, weighted,
                  added to the token's output row */
    const float *x, *h, *y, *weights;
    const float *const *bias; /* per assignment of the pass: its expert's b1 [2I] then b2 [H], fp32 */
    float *xs, *act, *out;
    const int64_t *mine; /* the pass's assignments t * K + k */
    int64_t H, I, K, count;
    float limit, alpha;
    int act_bf16;
} moe_rows_t;

static void moe_rows_part(const void *shared, int part, int parts) {
    const moe_rows_t *m = shared;
    float row[m->I > 0 ? m->I : 1];
    if (m->stage == 2) { /* a token's rows are added by one part, in the pass's order (its experts ascending) */
        for (int64_t i = 0; i < m->count; i++) {
            int64_t a = m->mine[i], t = a / m->K;
            if (t % parts == part)
                add_weighted(m->out + t * m->H, m->y + i * m->H, m->bias[i] + 2 * m->I, m->H, m->weights[a],
                             m->act_bf16);
        }
        return;
    }
    for (int64_t i = share_at(0, m->count, part, parts); i < share_at(0, m->count, part + 1, parts); i++) {
        if (m->stage == 0) {
            to_split(m->x + m->mine[i] / m->K * m->H, m->H, m->xs + i * m->H);
        } else {
            swiglu_row(m->h + i * 2 * m->I, m->bias[i], m->I, m->limit, m->alpha, m->act_bf16, row);
            to_split(row, m->I, m->act + i * m->I);
        }
    }
}

#define MOE_PARALLEL_TOKENS 16 /* a pass's assignments from which its per-token steps are split between threads */

static void moe_rows(const moe_rows_t *m, int threads) {
    parallel(m->count >= MOE_PARALLEL_TOKENS ? threads : 1, moe_rows_part, m);
}

#define MOE_CHUNK_TOKENS 512 /* assignments per pass of the MoE (its buffers: 24 KiB each at gpt-oss-20b's shapes) */

/* The MoE's activation buffers, kept by each calling thread between calls (freed when it exits): allocated and freed
   per call, their pages went back to the system and came again as page faults each time (a tenth of a 64-token
   MoE's time). NULL when out of memory. */
static pthread_key_t moe_scratch_key;
static pthread_once_t moe_scratch_once = PTHREAD_ONCE_INIT;
typedef struct {
    void *p;
    size_t bytes;
} scratch_t;

static void moe_scratch_free(void *v) {
    scratch_t *s = v;
    free(s->p);
    free(s);
}

static void moe_scratch_init(void) { pthread_key_create(&moe_scratch_key, moe_scratch_free); }

static float *moe_scratch(size_t bytes) {
    pthread_once(&moe_scratch_once, moe_scratch_init);
    scratch_t *s = pthread_getspecific(moe_scratch_key);
    if (s == NULL) {
        if ((s = calloc(1, sizeof(scratch_t))) == NULL || pthread_setspecific(moe_scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (bytes > s->bytes) {
        free(s->p);
        s->bytes = (bytes + 63) / 64 * 64;
        if ((s->p = aligned_alloc(64, s->bytes)) == NULL) s->bytes = 0;
    }
    return s->p;
}

/* A pass: consecutive experts' assignments, MOE_CHUNK_TOKENS at most (an expert with more has passes of its own),
   each step one parallel region for all of them: the tokens' rows, W1 of every expert, the SwiGLU, W2, the sums. */
int gptoss_moe_mxfp4(const float *x, int64_t T, int64_t H, const int64_t *ids, const float *weights, int64_t K,
                     const uint8_t *w1b, const uint8_t *w1s, const void *b1, const uint8_t *w2b, const uint8_t *w2s,
                     const void *b2, int bias_bf16, int act_bf16, int64_t E, int64_t I, float limit, float alpha,
                     float *out, int threads) {
    int64_t A = T * K, *count = calloc((size_t)E + 1, sizeof(int64_t)), *order = malloc((size_t)(A > 0 ? A : 1) * 8);
    int64_t most = A < MOE_CHUNK_TOKENS ? (A > 0 ? A : 1) : MOE_CHUNK_TOKENS, segs_max = most < E ? most : E;
    float *xs, *h, *act, *y, *bias;
    const float **bias_of = malloc((size_t)most * sizeof(float *));
    task_t *tasks = malloc((size_t)segs_max * sizeof(task_t));
    int64_t *seg_e = malloc((size_t)segs_max * sizeof(int64_t)), *seg_n = malloc((size_t)segs_max * sizeof(int64_t));
    int status = 0;
    if (!count || !order || !bias_of || !tasks || !seg_e || !seg_n) {
        status = -1;
        goto done;
    }
    for (int64_t a = 0; a < A; a++) /* assignments grouped by expert (counting sort, stable) */
        if (ids[a] >= 0 && ids[a] < E) count[ids[a] + 1]++;
    for (int64_t e = 0; e < E; e++) count[e + 1] += count[e];
    /* xs [most, H], h [most, 2I], act [most, I], y [most, H]; each expert of a pass: b1 [2I], b2 [H] fp32 */
    if ((xs = moe_scratch((size_t)(most * (3 * H + 3 * I) + segs_max * (2 * I + H)) * sizeof(float))) == NULL) {
        status = -1;
        goto done;
    }
    h = xs + most * H, act = h + most * 2 * I, y = act + most * I, bias = y + most * H;
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
    for (int64_t at = 0, e = 0; at < count[E];) { /* a pass over the assignments [at, at + used) */
        int64_t used = 0, segs = 0;
        for (; e < E && used < most; e++) {
            int64_t left = count[e + 1] - (at + used > count[e] ? at + used : count[e]);
            if (left == 0) continue;
            if (used > 0 && left > most - used) break; /* this expert waits for a pass of its own */
            int64_t take = left < most - used ? left : most - used;
            float *b = bias + segs * (2 * I + H);
            for (int64_t c = 0; c < 2 * I; c++) b[c] = bias_at(b1, bias_bf16, e * 2 * I + c);
            for (int64_t c = 0; c < H; c++) b[2 * I + c] = bias_at(b2, bias_bf16, e * H + c);
            for (int64_t i = used; i < used + take; i++) bias_of[i] = b;
            seg_e[segs] = e, seg_n[segs++] = take, used += take;
            if (take < left) break; /* the rest of this expert in the next pass */
        }
        const int64_t *mine = order + at;
        moe_rows_t rows = {0, x, h, y, weights, bias_of, xs, act, out, mine, H, I, K, used, limit, alpha, act_bf16};
        moe_rows(&rows, threads); /* the tokens */
        for (int64_t k = 0, i = 0; k < segs; i += seg_n[k++])
            mv_task(xs + i * H, seg_n[k], w1b + seg_e[k] * 2 * I * H / 2, w1s + seg_e[k] * 2 * I * (H / 32), 2 * I,
                    H / 32, h + i * 2 * I, act_bf16, threads, tasks + k);
        run_tasks(tasks, (int)segs, threads);
        for (int64_t k = 0; k < segs; k++) task_free(tasks + k);
        rows.stage = 1; /* + b1, SwiGLU, written in split order for W2 */
        moe_rows(&rows, threads);
        for (int64_t k = 0, i = 0; k < segs; i += seg_n[k++])
            mv_task(act + i * I, seg_n[k], w2b + seg_e[k] * H * I / 2, w2s + seg_e[k] * H * (I / 32), H, I / 32,
                    y + i * H, act_bf16, threads, tasks + k);
        run_tasks(tasks, (int)segs, threads);
        for (int64_t k = 0; k < segs; k++) task_free(tasks + k);
        rows.stage = 2; /* + b2, times the router's weight, added to the token's output */
        moe_rows(&rows, threads);
        at += used;
    }
done:
    free(count);
    free(order);
    free(bias_of);
    free(tasks);
    free(seg_e);
    free(seg_n);
    return status;
}

/* ---- decode attention on AVX512-BF16: a bf16 cache, head_dim 64, query heads per KV head a multiple of 4 ---- */

#define ATTN_HEADS 4 /* query heads whose 64 sums stay in registers through a pass over the values */

#ifdef GPTOSS_X86
/* softmax_sink 16 lanes at a time (exp_clamped16: exp_le0's method; the compiler leaves softmax_sink's loops scalar
   in this target) */
__attribute__((target("avx512f"))) static void softmax_sink16(float *p, int64_t N, float sink) {
    __m512 m = _mm512_set1_ps(sink), sum = _mm512_setzero_ps();
    for (int64_t n = 0; n < N; n += 16) {
        __mmask16 k = N - n < 16 ? (__mmask16)((1u << (N - n)) - 1) : 0xFFFF;
        m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, p + n));
    }
    float top = _mm512_reduce_max_ps(m);
    __m512 mv = _mm512_set1_ps(top);
    for (int64_t n = 0; n < N; n += 16) {
        __mmask16 k = N - n < 16 ? (__mmask16)((1u << (N - n)) - 1) : 0xFFFF;
        __m512 e = _mm512_maskz_mov_ps(k, exp_clamped16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p + n), mv)));
        _mm512_mask_storeu_ps(p + n, k, e);
        sum = _mm512_add_ps(sum, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / (_mm512_reduce_add_ps(sum) + expf(sink - top)));
    for (int64_t n = 0; n < N; n += 16) {
        __mmask16 k = N - n < 16 ? (__mmask16)((1u << (N - n)) - 1) : 0xFFFF;
        _mm512_mask_storeu_ps(p + n, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + n), inv));
    }
}

#define ATTN_AHEAD 32 /* keys ahead whose rows the AVX512-BF16 decode attention prefetches: the keys' rows into L1
                        as it makes the scores (each block's values into L2 meanwhile), the values' into L1 half as far
                        ahead as it sums them. Without it the loads of each row waited on memory (64 sequences of
                        100-600 keys, 4 KV heads, 2 threads: a full layer 2.3-3.1 -> 1.8-2.5 ms, with the keys in L3
                        2.4-2.6 -> 1.9; a 128-key window 0.9-1.2 -> 0.6-1.0 ms) */

__attribute__((always_inline)) static inline void prefetch_row128(const uint16_t *row, const int hint) {
    _mm_prefetch((const char *)row, hint);
    _mm_prefetch((const char *)row + 64, hint);
}

/* One (sequence, KV head) item: 16 keys at a time transposed to [32 pairs][16 keys] (transpose16_store, as the
   panels), so one vdpbf16ps per pair and query head sums 16 keys' products (bf16 products are exact; fp32 sums) and
   the scores come out in key order; softmax_sink as attend_items; then each value row widened to fp32 (a bf16 is the
   top half of its fp32: the even dims by a shift, the odd ones by a mask) times ATTN_HEADS heads' probabilities. */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void attend_item_bf16_64(const attn_t *a, int64_t item,
                                                                                     float *sc, int64_t *slots,
                                                                                     void *scratch) {
    static const uint16_t zero[64] __attribute__((aligned(64)));
    uint32_t *kt = scratch; /* [64 / 2 pairs][16 keys] */
    const int64_t G = a->G, KV = a->KV;
    int64_t b = item / KV, h = item % KV, L = a->seq_lens[b], row = a->rows[b];
    int64_t first = a->window > 0 && L > a->window ? L - a->window : 0, N = L - first;
    const uint16_t *kv = a->kv, *q = (const uint16_t *)a->q + (row * KV * G + h * G) * 64;
    for (int64_t n = 0, blk = first / a->block_size, off = first % a->block_size; n < N; n++) {
        slots[n] = ((int64_t)a->block_table[b * a->bt_stride + blk] * a->block_size + off) * KV + h; /* its row */
        if (++off == a->block_size) {
            off = 0;
            blk++;
        }
    }
    const __m512 scale = _mm512_set1_ps(a->scale);
    const uint16_t *values = kv + a->plane;
    for (int64_t n = 0; n < N && n < ATTN_AHEAD; n++) prefetch_row128(kv + slots[n] * 64, _MM_HINT_T0);
    for (int64_t n0 = 0; n0 < N; n0 += 16) {
        int m = N - n0 < 16 ? (int)(N - n0) : 16;
        __m512i r[16];
        for (int64_t n = n0 + ATTN_AHEAD; n < N && n < n0 + ATTN_AHEAD + 16; n++)
            prefetch_row128(kv + slots[n] * 64, _MM_HINT_T0);
        for (int i = 0; i < m; i++) prefetch_row128(values + slots[n0 + i] * 64, _MM_HINT_T1);
        for (int half = 0; half < 2; half++) {
            for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512((i < m ? kv + slots[n0 + i] * 64 : zero) + half * 32);
            transpose16_store(r, kt + half * 256);
        }
        for (int64_t g = 0; g < G; g++) {
            const uint32_t *qp = (const uint32_t *)(q + g * 64);
            __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
            for (int p = 0; p < 32; p += 2) {
                s0 = _mm512_dpbf16_ps(s0, (__m512bh)_mm512_load_si512(kt + p * 16), (__m512bh)_mm512_set1_epi32((int)qp[p]));
                s1 = _mm512_dpbf16_ps(s1, (__m512bh)_mm512_load_si512(kt + p * 16 + 16),
                                      (__m512bh)_mm512_set1_epi32((int)qp[p + 1]));
            }
            _mm512_mask_storeu_ps(sc + g * N + n0, (__mmask16)((1u << m) - 1), _mm512_mul_ps(_mm512_add_ps(s0, s1), scale));
        }
    }
    for (int64_t g = 0; g < G; g++) softmax_sink16(sc + g * N, N, a->sinks[h * G + g]);
    const __m512i top = _mm512_set1_epi32((int)0xffff0000u);
    const __m512i lo_dims = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi_dims = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int64_t g0 = 0; g0 < G; g0 += ATTN_HEADS) {
        __m512 acc[ATTN_HEADS][4]; /* [head][even dims 0-31, odd dims 0-31, even 32-63, odd 32-63] */
        for (int i = 0; i < ATTN_HEADS; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = _mm512_setzero_ps();
        for (int64_t n = 0; n < N; n++) {
            const uint16_t *v = values + slots[n] * 64;
            if (n + ATTN_AHEAD / 2 < N) prefetch_row128(values + slots[n + ATTN_AHEAD / 2] * 64, _MM_HINT_T0);
            __m512i v0 = _mm512_loadu_si512(v), v1 = _mm512_loadu_si512(v + 32);
            __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), o0 = _mm512_castsi512_ps(_mm512_and_si512(v0, top));
            __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), o1 = _mm512_castsi512_ps(_mm512_and_si512(v1, top));
            for (int i = 0; i < ATTN_HEADS; i++) {
                __m512 p = _mm512_set1_ps(sc[(g0 + i) * N + n]);
                acc[i][0] = _mm512_fmadd_ps(p, e0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(p, o0, acc[i][1]);
                acc[i][2] = _mm512_fmadd_ps(p, e1, acc[i][2]);
                acc[i][3] = _mm512_fmadd_ps(p, o1, acc[i][3]);
            }
        }
        for (int i = 0; i < ATTN_HEADS; i++) {
            uint16_t *out = (uint16_t *)a->out + (row * KV * G + h * G + g0 + i) * 64;
            __m512 d[4] = {_mm512_permutex2var_ps(acc[i][0], lo_dims, acc[i][1]),
                           _mm512_permutex2var_ps(acc[i][0], hi_dims, acc[i][1]),
                           _mm512_permutex2var_ps(acc[i][2], lo_dims, acc[i][3]),
                           _mm512_permutex2var_ps(acc[i][2], hi_dims, acc[i][3])};
            for (int k = 0; k < 4; k++)
                _mm256_storeu_si256((__m256i *)(out + k * 16),
                                    _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(bf16_round16(d[k])), 16)));
        }
    }
}
#endif

#ifdef GPTOSS_X86
/* runs one(a, item, scores, slots, scratch) on each of a's items, the scores [G, N] and slots [N] buffers grown to
   each item's keys; 0 (out of memory: items left unwritten, which the caller checks the output for) */
typedef void (*attend_item_t)(const attn_t *a, int64_t item, float *sc, int64_t *slots, void *scratch);

static int attend_each(const attn_t *a, attend_item_t one, void *scratch) {
    int64_t cap = 0;
    float *sc = NULL;
    int64_t *slots = NULL;
    for (int64_t item = a->item0; item < a->item1; item++) {
        int64_t L = a->seq_lens[item / a->KV], N = a->window > 0 && L > a->window ? a->window : L;
        if (N > cap) {
            free(sc);
            free(slots);
            cap = N * 2;
            sc = malloc((size_t)(cap * a->G) * sizeof(float));
            slots = malloc((size_t)cap * sizeof(int64_t));
            if (sc == NULL || slots == NULL) break;
        }
        if (N > 0) one(a, item, sc, slots, scratch);
    }
    free(sc);
    free(slots);
    return 0;
}
#endif

static int attend_bf16_64(const attn_t *a) {
#ifdef GPTOSS_X86
    if (gptoss_mxfp4_isa() < 3 || !a->act_bf16 || !a->kv_bf16 || a->D != 64 || a->G % ATTN_HEADS) return -1;
    uint32_t kt[512] __attribute__((aligned(64)));
    return attend_each(a, attend_item_bf16_64, kt);
#else
    (void)a;
    return -1;
#endif
}

#ifdef GPTOSS_X86
/* softmax_sink 8 lanes at a time (exp_clamped8: exp_le0's method; the tail's lanes one at a time by exp_le0) */
__attribute__((target("avx2,fma"))) static void softmax_sink8(float *p, int64_t N, float sink) {
    __m256 m = _mm256_set1_ps(sink), sum = _mm256_setzero_ps();
    int64_t body = N / 8 * 8;
    for (int64_t n = 0; n < body; n += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(p + n));
    float lanes[8], top, total = 0.0f;
    _mm256_storeu_ps(lanes, m);
    top = lanes[0];
    for (int i = 1; i < 8; i++) top = lanes[i] > top ? lanes[i] : top;
    for (int64_t n = body; n < N; n++) top = p[n] > top ? p[n] : top;
    const __m256 mv = _mm256_set1_ps(top);
    for (int64_t n = 0; n < body; n += 8) {
        __m256 e = exp_clamped8(_mm256_sub_ps(_mm256_loadu_ps(p + n), mv));
        _mm256_storeu_ps(p + n, e);
        sum = _mm256_add_ps(sum, e);
    }
    _mm256_storeu_ps(lanes, sum);
    for (int i = 0; i < 8; i++) total += lanes[i];
    for (int64_t n = body; n < N; n++) total += p[n] = exp_le0(p[n] - top);
    const float inv = 1.0f / (total + expf(sink - top));
    const __m256 iv = _mm256_set1_ps(inv);
    for (int64_t n = 0; n < body; n += 8) _mm256_storeu_ps(p + n, _mm256_mul_ps(_mm256_loadu_ps(p + n), iv));
    for (int64_t n = body; n < N; n++) p[n] *= inv;
}

/* 8 values of a cache row from `at` (bf16 widened, or fp32) */
__attribute__((target("avx2,fma"))) static inline __m256 kv_row8(const void *base, int bf16, int64_t at) {
    return bf16 ? widen_avx2((const uint16_t *)base + at) : _mm256_loadu_ps((const float *)base + at);
}

/* One (sequence, KV head) item on AVX2, head_dim 64: the keys F32_PANEL_ROWS at a time copied into a transposed
   panel (tpanel_fill_bf16 / _f32), the scores of all G query heads against them by tpanel_tokens (the heads as its
   tokens: each score summed in d's order), softmax_sink8, then the values: ATTN_HEADS heads x 16 dims accumulate in
   registers over the keys, a quarter of the dims at a time */
__attribute__((target("avx2,fma"))) static void attend_item_avx2_64(const attn_t *a, int64_t item, float *sc,
                                                                   int64_t *slots, void *scratch) {
    const int64_t G = a->G, KV = a->KV, D = 64;
    float *qf = scratch; /* [G, 64] */
    int64_t b = item / KV, h = item % KV, L = a->seq_lens[b], row = a->rows[b];
    int64_t first = a->window > 0 && L > a->window ? L - a->window : 0, N = L - first;
    float panel[F32_PANEL_ROWS * 64] __attribute__((aligned(32)));
    union {
        uint16_t b[F32_PANEL_ROWS * 64];
        float f[F32_PANEL_ROWS * 64];
    } keys;
    for (int64_t n = 0, blk = first / a->block_size, off = first % a->block_size; n < N; n++) {
        slots[n] = ((int64_t)a->block_table[b * a->bt_stride + blk] * a->block_size + off) * KV + h; /* its row */
        if (++off == a->block_size) {
            off = 0;
            blk++;
        }
    }
    for (int64_t g = 0; g < G; g++) {
        load_row(a->q, a->act_bf16, (row * KV * G + h * G + g) * D, D, qf + g * D);
        for (int64_t d = 0; d < D; d++) qf[g * D + d] *= a->scale;
    }
    for (int64_t n0 = 0; n0 < N; n0 += F32_PANEL_ROWS) {
        int m = N - n0 < F32_PANEL_ROWS ? (int)(N - n0) : F32_PANEL_ROWS;
        for (int i = 0; i < m; i++)
            if (a->kv_bf16)
                memcpy(keys.b + i * D, (const uint16_t *)a->kv + slots[n0 + i] * D, D * sizeof(uint16_t));
            else
                memcpy(keys.f + i * D, (const float *)a->kv + slots[n0 + i] * D, D * sizeof(float));
        if (a->kv_bf16)
            tpanel_fill_bf16(panel, keys.b, D, m, 0);
        else
            tpanel_fill_f32(panel, keys.f, D, m);
        tpanel_tokens(panel, m, D, qf, G, sc + n0, N);
    }
    for (int64_t g = 0; g < G; g++) softmax_sink8(sc + g * N, N, a->sinks[h * G + g]);
    const int64_t plane = a->plane;
    for (int64_t g0 = 0; g0 < G; g0 += ATTN_HEADS)
        for (int64_t d0 = 0; d0 < D; d0 += 16) {
            __m256 acc[ATTN_HEADS][2];
            for (int i = 0; i < ATTN_HEADS; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
            for (int64_t n = 0; n < N; n++) {
                int64_t at = plane + slots[n] * D + d0;
                __m256 v0 = kv_row8(a->kv, a->kv_bf16, at), v1 = kv_row8(a->kv, a->kv_bf16, at + 8);
                for (int i = 0; i < ATTN_HEADS; i++) {
                    __m256 p = _mm256_broadcast_ss(sc + (g0 + i) * N + n);
                    acc[i][0] = _mm256_fmadd_ps(p, v0, acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(p, v1, acc[i][1]);
                }
            }
            for (int i = 0; i < ATTN_HEADS; i++) {
                float o[16];
                int64_t at = (row * KV * G + h * G + g0 + i) * D + d0;
                _mm256_storeu_ps(o, acc[i][0]);
                _mm256_storeu_ps(o + 8, acc[i][1]);
                if (a->act_bf16)
                    for (int d = 0; d < 16; d++) ((uint16_t *)a->out)[at + d] = round_bf16(o[d]);
                else
                    memcpy((float *)a->out + at, o, sizeof o);
            }
        }
}
#endif

/* the AVX2 path (head_dim 64, query heads per KV head a multiple of ATTN_HEADS) where the CPU has no AVX512-BF16
   path for this cache: 0, or -1 */
static int attend_avx2_64(const attn_t *a) {
#ifdef GPTOSS_X86
    if (gptoss_mxfp4_isa() < 1 || a->D != 64 || a->G % ATTN_HEADS) return -1;
    float qf[a->G * 64]; /* the item's query heads, scaled, in fp32 */
    return attend_each(a, attend_item_avx2_64, qf);
#else
    (void)a;
    return -1;
#endif
}

/* ---- greedy tokens straight from the hidden states: the unembedding's tiles on AMX, each row's argmax kept ---- */

typedef struct {
    const uint16_t *w, *hv; /* w: rows [w_row0, ..) of W [V, K] bf16; hv: the tokens as B tiles ([chunks][K / 32][16
                               pairs][16][2]) */
    int64_t w_row0;
    int64_t n, V, K, v0, v1; /* vocabulary rows [v0, v1) for this thread */
    float *best;             /* [n] the largest logit (rounded to bf16) seen; NaN above all */
    int64_t *at;             /* [n] its first index */
} greedy_t;

#ifdef GPTOSS_X86
/* h [n, K] bf16 -> B tiles: token chunk c, k-step s: [16 pairs][16 tokens][2], the pairs (2p, 2p + 1) of the 32 k */
__attribute__((target("avx512f"))) static uint16_t *amx_pack_h(const uint16_t *h, int64_t n, int64_t K) {
    int64_t chunks = (n + 15) / 16, steps = K / 32;
    uint16_t *v = calloc((size_t)(chunks * steps * 512), sizeof(uint16_t));
    if (v == NULL) return NULL;
    const __m512i rows = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
    for (int64_t t = 0; t < n; t++)
        for (int64_t st = 0; st < steps; st++)
            _mm512_i32scatter_epi32((int32_t *)(v + ((t / 16) * steps + st) * 512) + t % 16, rows,
                                    _mm512_loadu_si512(h + t * K + st * 32), 4);
    return v;
}

#define GREEDY_DP(c)                                                                                               \
    case c:                                                                                                        \
        _tile_loadd(5, g->hv + ((c0 + c) * steps + st) * 512, 64);                                                  \
        _tile_dpbf16ps(c, 4, 5);                                                                                   \
        break;

/* per 16 vocabulary rows: C tiles [16 rows][16 tokens] = W rows (A tiles read in place, a row stride apart) times
   the tokens, each logit rounded to bf16 (as the unembedding's bf16 output) and compared in vocabulary order */
__attribute__((target("avx512f,avx512bw,avx512vl,amx-tile,amx-bf16"))) static void greedy_rows(greedy_t *g) {
    const int64_t steps = g->K / 32, chunks = (g->n + 15) / 16;
    float cbuf[256] __attribute__((aligned(64)));
    amx_configure();
    for (int64_t c0 = 0; c0 < chunks; c0 += AMX_CHUNKS) {
        int nc = chunks - c0 < AMX_CHUNKS ? (int)(chunks - c0) : AMX_CHUNKS;
        __m512 best[AMX_CHUNKS]; /* per token tile: each token's largest logit so far (bf16 value; NaN above all) */
        __m512i at[AMX_CHUNKS];  /* and its first index */
        for (int c = 0; c < AMX_CHUNKS; c++) {
            best[c] = _mm512_set1_ps(-__builtin_inff());
            at[c] = _mm512_set1_epi32((int)g->v0);
        }
        for (int64_t r = g->v0; r < g->v1; r += 16) {
            int64_t rows = g->v1 - r < 16 ? g->v1 - r : 16;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t st = 0; st < steps; st++) {
                _tile_loadd(4, g->w + (r - g->w_row0) * g->K + st * 32, g->K * 2);
                for (int c = 0; c < nc; c++) switch (c) {
                        GREEDY_DP(0)
                        GREEDY_DP(1)
                        GREEDY_DP(2)
                        GREEDY_DP(3)
                    }
            }
            for (int c = 0; c < nc; c++) {
                switch (c) {
                    AMX_STORE(0)
                    AMX_STORE(1)
                    AMX_STORE(2)
                    AMX_STORE(3)
                }
                for (int64_t i = 0; i < rows; i++) { /* row i: its logit for the 16 tokens, in vocabulary order */
                    __m512 v = bf16_round16(_mm512_load_ps(cbuf + i * 16));
                    __mmask16 settled = _mm512_cmp_ps_mask(best[c], best[c], _CMP_UNORD_Q); /* a NaN stays */
                    __mmask16 take = _mm512_cmp_ps_mask(v, best[c], _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                    take &= (__mmask16)~settled;
                    best[c] = _mm512_mask_mov_ps(best[c], take, v);
                    at[c] = _mm512_mask_mov_epi32(at[c], take, _mm512_set1_epi32((int)(r + i)));
                }
            }
        }
        for (int c = 0; c < nc; c++) {
            float b[16];
            int32_t a[16];
            _mm512_storeu_ps(b, best[c]);
            _mm512_storeu_si512(a, at[c]);
            for (int64_t tt = 0; tt < 16 && (c0 + c) * 16 + tt < g->n; tt++) {
                g->best[(c0 + c) * 16 + tt] = b[tt];
                g->at[(c0 + c) * 16 + tt] = a[tt];
            }
        }
    }
    _tile_release();
}

static void greedy_part(const void *shared, int i, int n) { /* whole blocks of 16 rows between the parts, each part
                                                              its own best and at */
    const greedy_t *g = shared;
    greedy_t part = *g;
    part.v0 = share_at(0, g->V / 16, i, n) * 16;
    part.v1 = share_at(0, g->V / 16, i + 1, n) * 16;
    part.best = g->best + i * g->n;
    part.at = g->at + i * g->n;
    greedy_rows(&part);
}
#endif

/* out[t] = argmax over v of bf16(h[t] . W[v]) (torch.argmax of the bf16 logits: the first of equal maxima, NaN
   largest) without writing the logits: h [n, K], W [V, K] bf16, K a multiple of 32, V >= 16. Returns 0, or -1 (no AMX
   here, or no memory: the caller computes the logits) */
/* ---- greedy tokens on AVX2: the unembedding a transposed panel at a time, each token's argmax kept ---- */

#ifdef GPTOSS_X86
typedef struct {
    const void *w;   /* W [V, K]: bf16 (bf16 set) or fp32 */
    const float *xs; /* [n, K] fp32 (bf16 tokens widened) */
    int64_t n, V, K;
    int bf16;
    float *best;  /* [parts][n] each part's largest logit (bf16-rounded when bf16, as linear's); NaN above all */
    int64_t *at;  /* [parts][n] its first index */
} pgreedy_t;

/* part i of the vocabulary (whole blocks of F32_PANEL_ROWS rows): the sums of bf16panel_rows_avx2 and
   f32linear_rows_avx2 (the same panels and blocks: the same bits as their logits), compared in vocabulary order; a
   token's 16 sums of a block are checked one by one only where some lies above its best so far (or is a NaN) */
__attribute__((target("avx2,fma"))) static void greedy_panels_part(const void *shared, int i, int parts) {
    const pgreedy_t *g = shared;
    const int64_t K = g->K, n = g->n, blocks = (g->V + F32_PANEL_ROWS - 1) / F32_PANEL_ROWS;
    const int64_t v0 = share_at(0, blocks, i, parts) * F32_PANEL_ROWS;
    const int64_t v1 = share_at(0, blocks, i + 1, parts) * F32_PANEL_ROWS;
    float *best = g->best + i * n;
    int64_t *at = g->at + i * n;
    float panel[F32_PANEL_ROWS * K] __attribute__((aligned(32))), sums[F32_PASS_TOKENS * F32_PANEL_ROWS];
    for (int64_t t = 0; t < n; t++) best[t] = -__builtin_inff(), at[t] = v0;
    for (int64_t r = v0; r < v1 && r < g->V; r += F32_PANEL_ROWS) {
        int rows = g->V - r < F32_PANEL_ROWS ? (int)(g->V - r) : F32_PANEL_ROWS;
        if (g->bf16)
            tpanel_fill_bf16(panel, (const uint16_t *)g->w + r * K, K, rows, AHEAD(g->V - r - F32_PANEL_ROWS));
        else
            tpanel_fill_f32(panel, (const float *)g->w + r * K, K, rows);
        for (int64_t t0 = 0; t0 < n; t0 += F32_PASS_TOKENS) {
            int64_t nt = n - t0 < F32_PASS_TOKENS ? n - t0 : F32_PASS_TOKENS;
            tpanel_tokens(panel, F32_PANEL_ROWS, K, g->xs + t0 * K, nt, sums, F32_PANEL_ROWS);
            for (int64_t t = 0; t < nt; t++) {
                float *b = best + t0 + t;
                if (*b != *b) continue; /* a NaN came first: settled */
                const float *s = sums + t * F32_PANEL_ROWS;
                __m256 above = _mm256_set1_ps(*b);
                unsigned cand = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s), above, _CMP_NLE_UQ)) |
                                (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + 8), above, _CMP_NLE_UQ))
                                    << 8;
                for (cand &= (1u << rows) - 1; cand; cand &= cand - 1) { /* in vocabulary order */
                    int u = __builtin_ctz(cand);
                    float v = g->bf16 ? widen(round_bf16(s[u])) : s[u];
                    if (v != v || v > *b) {
                        *b = v;
                        at[t0 + t] = r + u;
                        if (v != v) break;
                    }
                }
            }
        }
    }
}

#endif

static int greedy_threads(int threads, int64_t V) { /* the greedy kernels' parts: a share of V worth its start */
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > V / 4096) threads = (int)(V / 4096);
    return threads < 1 ? 1 : threads;
}

static void greedy_merge(const float *best, const int64_t *at, int64_t n, int parts, int64_t *out) {
    for (int64_t t = 0; t < n; t++) { /* the parts' ranges in vocabulary order */
        float b = best[t];
        int64_t a = at[t];
        for (int i = 1; i < parts; i++) {
            float v = best[i * n + t];
            if (b != b) break;
            if (v != v || v > b) b = v, a = at[i * n + t];
        }
        out[t] = a;
    }
}

#ifdef GPTOSS_X86
/* the AVX2 panels' greedy tokens: 0, or -1 (no memory) */
static int greedy_panels(const void *h, int64_t n, const void *w, int64_t V, int64_t K, int bf16, int64_t *out,
                         int threads) {
    float *xs = bf16 ? malloc((size_t)(n * K) * sizeof(float)) : NULL;
    float *best = malloc((size_t)(MAX_THREADS * n) * sizeof(float));
    int64_t *at = malloc((size_t)(MAX_THREADS * n) * sizeof(int64_t));
    if ((bf16 && xs == NULL) || best == NULL || at == NULL) {
        free(xs);
        free(best);
        free(at);
        return -1;
    }
    for (int64_t i = 0; bf16 && i < n * K; i++) xs[i] = widen(((const uint16_t *)h)[i]);
    threads = greedy_threads(threads, V);
    pgreedy_t all = {w, bf16 ? xs : h, n, V, K, bf16, best, at};
    parallel(threads, greedy_panels_part, &all);
    greedy_merge(best, at, n, threads, out);
    free(xs);
    free(best);
    free(at);
    return 0;
}
#endif

/* ---- greedy tokens on AVX512-BF16: the tokens in the AMX path's B layout, W read in place ---- */

#define BGREEDY_ROWS 6   /* vocabulary rows per register block: 6 x 4 accumulators, 4 token vectors, 1 broadcast */
#define BGREEDY_ROWS1 12 /* ... where the call has one token vector: 12 chains (6 do not keep vdpbf16ps busy) */
#define BGREEDY_CHUNKS 4 /* token vectors (16 tokens each) per pass over a block of rows */
/* from how many tokens this beats the logits path (oneDNN's GEMM, then argmax; at most LINEAR_MAX_TOKENS rows the
   native matvec) on a 201,088-row vocabulary (Zen 4 VM, 2 threads, 2026-12-03): with K up to 128 the logits cost as
   much as the sums, so from 12 tokens (K 64: 1.75-2.1x at 16-128; below 12 most lanes of each vdpbf16ps are
   padding); with a wider K, since W's lines are prefetched, from 2, up to 8 tokens as 16 / M of them with M pairs
   each in a vector (bgreedy_block_m; K 1024 against the logits path: about even at 2, 1.06-1.14x at 4, 1.5x at 8
   where one pair a token left half the lanes padding; 1.15x at 12, 1.25-1.4x at 16, 1.15-1.35x at 24-64; K 2880,
   unpacked: 1.7-1.9x at 8-16, 1.16-1.2x at 64). One token: the logits path (its matvec reads W faster) */
#ifdef GPTOSS_X86
static int bgreedy_min_tokens(int64_t K) { return K <= 128 ? 12 : 2; }

typedef struct {
    const uint16_t *w;  /* W [V, K] bf16 */
    const uint16_t *hv; /* the tokens: [chunk][K / 2 pairs][16 tokens][2] (amx_pack_h's layout), or with M > 1
                           bgreedy_pack's */
    int64_t n, V, K;
    int M;        /* pairs of each token a vector holds (16 / M tokens): 1; for at most 8 tokens 2, 4 or 8 */
    void *out;    /* where set, the sums are stored instead (bgreedy_store: the linear [n, V] of bgreedy_linear) */
    const uint16_t *bias; /* ... with this bias [V] added (or NULL), rounded to bf16 where out_bf16 */
    int out_bf16;
    float *best;  /* [parts][n] each part's largest logit per token (a bf16 value); NaN above all (greedy_merge's) */
    int64_t *at;  /* [parts][n] its first index */
} bgreedy_t;

/* the sums of rows [r, r + R) (acc[i]: token t's in lane t M) for tokens [t0, t0 + 16 / M) stored to g->out[t, r + i]
   as put_linear stores them: the bias added, then rounded to bf16 where out_bf16 */
__attribute__((target("avx512f"), always_inline)) static inline void bgreedy_store(const bgreedy_t *g, const __m512 *acc,
                                                                                    int64_t r, int64_t t0, const int R,
                                                                                    const int M) {
    int64_t nt = g->n - t0 < 16 / M ? g->n - t0 : 16 / M;
    for (int i = 0; i < R; i++) {
        float f[16], b = g->bias ? widen(g->bias[r + i]) : 0.0f;
        _mm512_storeu_ps(f, acc[i]);
        for (int64_t t = 0; t < nt; t++) {
            int64_t at = (t0 + t) * g->V + r + i;
            if (g->out_bf16)
                ((uint16_t *)g->out)[at] = round_bf16(f[t * M] + b);
            else
                ((float *)g->out)[at] = f[t * M] + b;
        }
    }
}

/* the logits of rows [r, r + R) (their sums in acc) rounded to bf16 and compared with the token vector's best so far in
   vocabulary order, as greedy_rows does */
__attribute__((target("avx512f"), always_inline)) static inline void bgreedy_take(const __m512 *acc, int64_t r,
                                                                                   float *best, int32_t *at, const int R) {
    __m512 top = _mm512_loadu_ps(best);
    __m512i idx = _mm512_loadu_si512(at);
    for (int i = 0; i < R; i++) {
        __m512 v = bf16_round16(acc[i]);
        __mmask16 settled = _mm512_cmp_ps_mask(top, top, _CMP_UNORD_Q); /* a NaN stays */
        __mmask16 take = _mm512_cmp_ps_mask(v, top, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        take &= (__mmask16)~settled;
        top = _mm512_mask_mov_ps(top, take, v);
        idx = _mm512_mask_mov_epi32(idx, take, _mm512_set1_epi32((int)(r + i)));
    }
    _mm512_storeu_ps(best, top);
    _mm512_storeu_si512(at, idx);
}

/* M (2, 4 or 8) pairs of each row broadcast at a time against one token vector of 16 / M tokens, lane t M + m token t's
   pair m of the M: each token's sum then the total of its M lanes (in each of them) */
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void bgreedy_block_m(
        const bgreedy_t *g, int64_t r, float *best, int32_t *at, const int R, const int M) {
    const int64_t P = g->K / 2, Q = P / M;
    const uint32_t *w = (const uint32_t *)(g->w + r * g->K), *hv = (const uint32_t *)g->hv;
    const char *next = (const char *)(g->w + (r + R) * g->K);
    __m512 acc[BGREEDY_ROWS1];
    for (int i = 0; i < R; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t q = 0; q < Q; q++) {
        __m512bh h = (__m512bh)_mm512_loadu_si512(hv + q * 16);
        for (int64_t l = (q * R * M) / 16; l < ((q + 1) * R * M) / 16; l++) _mm_prefetch(next + l * 64, _MM_HINT_T1);
        for (int i = 0; i < R; i++) {
            const uint32_t *at_w = w + i * P + q * M;
            __m512i wv = M == 2   ? _mm512_set1_epi64(*(const int64_t *)at_w)
                         : M == 4 ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)at_w))
                                  : _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)at_w));
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)wv, h);
        }
    }
    for (int i = 0; i < R; i++) { /* a butterfly over each token's M lanes */
        acc[i] = _mm512_add_ps(acc[i], _mm512_permute_ps(acc[i], 0xB1));
        if (M >= 4) acc[i] = _mm512_add_ps(acc[i], _mm512_permute_ps(acc[i], 0x4E));
        if (M >= 8) acc[i] = _mm512_add_ps(acc[i], _mm512_shuffle_f32x4(acc[i], acc[i], 0xB1));
    }
    if (g->out)
        bgreedy_store(g, acc, r, 0, R, M);
    else
        bgreedy_take(acc, r, best, at, R);
}

/* rows [r, r + R) against token vectors [c0, c0 + nc): per pair p one broadcast of each row's pair (W[r][2p],
   W[r][2p + 1]) times each token vector, one chain per logit (a token's sums do not depend on the others in the
   call); then each logit rounded to bf16 and compared in vocabulary order, as greedy_rows does */
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void bgreedy_block(
        const bgreedy_t *g, int64_t r, int64_t c0, float *best, int32_t *at, const int R, const int nc) {
    const int64_t P = g->K / 2;
    if (g->M > 1) { /* at most 8 tokens: one vector, M pairs of each (bgreedy_block_m) */
        switch (g->M) {
            case 2: bgreedy_block_m(g, r, best, at, R, 2); break;
            case 4: bgreedy_block_m(g, r, best, at, R, 4); break;
            default: bgreedy_block_m(g, r, best, at, R, 8); break;
        }
        return;
    }
    const uint32_t *w = (const uint32_t *)(g->w + r * g->K);
    const uint16_t *hv = g->hv + c0 * P * 32;
    const char *next = (const char *)(g->w + (r + R) * g->K); /* the next block's rows, R * K / 32 lines */
    __m512 acc[BGREEDY_ROWS1][BGREEDY_CHUNKS];
    for (int i = 0; i < R; i++)
        for (int c = 0; c < nc; c++) acc[i][c] = _mm512_setzero_ps();
    for (int64_t p = 0; p < P; p++) {
        __m512bh h[BGREEDY_CHUNKS];
        for (int c = 0; c < nc; c++) h[c] = (__m512bh)_mm512_loadu_si512(hv + (c * P + p) * 32);
        /* the next block's lines into L2 as this one goes (R / 16 lines a pair): without it W came at 14 GB/s
           against 32 for one row's matvec, the prefetchers lost in R streams moving 4 bytes a pair each; into L1 it
           was no faster, evicting the token vectors */
        if ((p * R) % 16 < R) _mm_prefetch(next + ((p * R) / 16) * 64, _MM_HINT_T1);
        for (int i = 0; i < R; i++) {
            __m512bh pair = (__m512bh)_mm512_set1_epi32((int)w[i * P + p]);
            for (int c = 0; c < nc; c++) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], pair, h[c]);
        }
    }
    for (int c = 0; c < nc; c++) {
        __m512 sums[BGREEDY_ROWS1];
        for (int i = 0; i < R; i++) sums[i] = acc[i][c];
        if (g->out)
            bgreedy_store(g, sums, r, (c0 + c) * 16, R, 1);
        else
            bgreedy_take(sums, r, best + (c0 + c) * 16, at + (c0 + c) * 16, R);
    }
}

#define BGREEDY_NC(R, left)                                                                                        \
    switch (left < BGREEDY_CHUNKS ? left : BGREEDY_CHUNKS) {                                                       \
        case 1: bgreedy_block(g, r, c0, best, at, R, 1); break;                                                    \
        case 2: bgreedy_block(g, r, c0, best, at, R, 2); break;                                                    \
        case 3: bgreedy_block(g, r, c0, best, at, R, 3); break;                                                    \
        default: bgreedy_block(g, r, c0, best, at, R, 4); break;                                                   \
    }

/* part i of the vocabulary (whole blocks of BGREEDY_ROWS1 rows; the last part takes the rows after them one at a
   time): each block (BGREEDY_ROWS1 rows with one token vector, else BGREEDY_ROWS) against every token vector while
   its rows are in L1 */
__attribute__((target("avx512f,avx512bf16"))) static void bgreedy_part(const void *shared, int i, int parts) {
    const bgreedy_t *g = shared;
    const int64_t chunks = (g->n + 15) / 16, blocks = g->V / BGREEDY_ROWS1;
    const int64_t v0 = share_at(0, blocks, i, parts) * BGREEDY_ROWS1;
    const int64_t v1 = i + 1 == parts ? g->V : share_at(0, blocks, i + 1, parts) * BGREEDY_ROWS1;
    float best[chunks * 16]; /* whole token vectors, the lanes past n padding */
    int32_t at[chunks * 16];
    for (int64_t t = 0; t < chunks * 16; t++) best[t] = -__builtin_inff(), at[t] = (int32_t)v0;
    int64_t r = v0;
    if (chunks == 1)
        for (; r + BGREEDY_ROWS1 <= v1; r += BGREEDY_ROWS1) bgreedy_block(g, r, 0, best, at, BGREEDY_ROWS1, 1);
    else
        for (; r + BGREEDY_ROWS <= v1; r += BGREEDY_ROWS)
            for (int64_t c0 = 0; c0 < chunks; c0 += BGREEDY_CHUNKS) BGREEDY_NC(BGREEDY_ROWS, chunks - c0)
    for (; r < v1; r++)
        for (int64_t c0 = 0; c0 < chunks; c0 += BGREEDY_CHUNKS) BGREEDY_NC(1, chunks - c0)
    if (g->out) return; /* bgreedy_linear: the sums are stored */
    for (int64_t t = 0; t < g->n; t++) g->best[i * g->n + t] = best[t * g->M], g->at[i * g->n + t] = at[t * g->M];
}

/* n <= 16 / M tokens [n, K] bf16 -> [K / 2 / M vectors][16] pairs: vector q's lane t M + m token t's pair q M + m;
   the lanes past n zero */
static uint16_t *bgreedy_pack(const uint16_t *h, int64_t n, int64_t K, int M) {
    int64_t P = K / 2;
    uint32_t *v = calloc((size_t)(P / M * 16), sizeof(uint32_t));
    if (v == NULL) return NULL;
    for (int64_t t = 0; t < n; t++)
        for (int64_t p = 0; p < P; p++) memcpy(v + (p / M) * 16 + t * M + p % M, h + t * K + 2 * p, 4);
    return (uint16_t *)v;
}

/* AVX512-BF16's greedy tokens (bf16, K a multiple of 32, V < 2^31): 0, or -1 (no memory) */
static int greedy_bf16dp(const uint16_t *h, int64_t n, const uint16_t *w, int64_t V, int64_t K, int64_t *out,
                         int threads) {
    threads = greedy_threads(threads, V);
    int M = n <= 2 ? 8 : n <= 4 ? 4 : n <= 8 ? 2 : 1;
    uint16_t *hv = M > 1 ? bgreedy_pack(h, n, K, M) : amx_pack_h(h, n, K);
    float *best = malloc((size_t)(threads * n) * sizeof(float));
    int64_t *at = malloc((size_t)(threads * n) * sizeof(int64_t));
    int status = hv && best && at ? 0 : -1;
    if (status == 0) {
        bgreedy_t all = {w, hv, n, V, K, M, NULL, NULL, 0, best, at};
        parallel(threads, bgreedy_part, &all);
        greedy_merge(best, at, n, threads, out);
    }
    free(hv);
    free(best);
    free(at);
    return status;
}
#endif

/* out [n, R] = x [n, K] @ w.T (+ bias) on AVX512-BF16 (bf16, K a multiple of 32, 2 <= n): greedy's blocks with the
   sums stored (bgreedy_store), W's rows split between the parts; 0, or -1 (no memory) */
static int bgreedy_linear(const uint16_t *x, int64_t n, const uint16_t *w, const uint16_t *bias, int64_t R, int64_t K,
                          void *out, int out_bf16, int threads) {
    int M = n <= 2 ? 8 : n <= 4 ? 4 : n <= 8 ? 2 : 1;
    uint16_t *hv = M > 1 ? bgreedy_pack(x, n, K, M) : amx_pack_h(x, n, K);
    if (hv == NULL) return -1;
    bgreedy_t all = {w, hv, n, R, K, M, out, bias, out_bf16, NULL, NULL};
    parallel(parts_for(R, threads, rows_per_thread(K * 2, BGREEDY_ROWS1)), bgreedy_part, &all);
    free(hv);
    return 0;
}

/* out[t] = argmax over v of the logit h[t] . W[v] (torch.argmax of linear's logits: the first of equal maxima, NaN
   largest) without writing the logits: h [n, K], W [V, K], both bf16 (bf16 set: each logit rounded to bf16, as the
   logits are) or both fp32. On AMX (bf16, K a multiple of 32, V >= 16) the weight's tiles; on AVX2 from
   F32_PANEL_MIN_TOKENS tokens (K a multiple of 16 up to F32_PANEL_MAX_K; an fp32 W 32-byte aligned) the panels of
   the bf16 and fp32 linear paths, so the same logits as theirs. Returns 0, or -1 (not here, or no memory: the caller
   computes the logits) */
int gptoss_greedy_tokens(const void *h, int64_t n, const void *w, int64_t V, int64_t K, int bf16, int64_t *out,
                         int threads) {
#ifdef GPTOSS_X86
    if (n < 1) return -1;
    if (gptoss_mxfp4_isa() == 1 && n >= F32_PANEL_MIN_TOKENS && K % 16 == 0 && K <= F32_PANEL_MAX_K &&
        (bf16 || !((uintptr_t)w & 31)))
        return greedy_panels(h, n, w, V, K, bf16, out, threads);
    if (bf16 && gptoss_mxfp4_isa() == 3 && n >= bgreedy_min_tokens(K) && K % 32 == 0 && V < 0x7fffffff)
        return greedy_bf16dp(h, n, w, V, K, out, threads);
    if (!bf16 || gptoss_mxfp4_isa() < 4 || K % 32 || V < 16) return -1;
    const uint16_t *wb = w;
    uint16_t *hv = amx_pack_h(h, n, K);
    float *best = malloc((size_t)((MAX_THREADS + 1) * n) * sizeof(float)); /* per thread, then the tail */
    int64_t *at = malloc((size_t)((MAX_THREADS + 1) * n) * sizeof(int64_t));
    if (hv == NULL || best == NULL || at == NULL) {
        free(hv);
        free(best);
        free(at);
        return -1;
    }
    threads = greedy_threads(threads, V);
    greedy_t all = {wb, hv, 0, n, V, K, 0, V, best, at};
    int64_t tail = V % 16; /* rows after the last whole block: done alone from a padded copy (no read past W) */
    parallel(threads, greedy_part, &all);
    int status = 0;
    if (tail) { /* the last rows: a copy padded to 16 rows, so no read past W */
        uint16_t *pad = calloc((size_t)(16 * K), sizeof(uint16_t));
        if (pad == NULL) {
            status = -1;
        } else {
            memcpy(pad, wb + (V - tail) * K, (size_t)(tail * K) * sizeof(uint16_t));
            greedy_t p = {pad, hv, V - tail, n, V, K, V - tail, V, best + threads * n, at + threads * n};
            greedy_rows(&p);
            free(pad);
        }
    }
    greedy_merge(best, at, n, threads + (tail > 0), out);
    free(hv);
    free(best);
    free(at);
    return status;
#else
    (void)h, (void)n, (void)w, (void)V, (void)K, (void)bf16, (void)out, (void)threads;
    return -1;
#endif
}

/* ---- the small ops of a decode step (a torch op each costs more than their arithmetic at a few tokens) ---- */

static inline float load_act(const void *p, int bf16, int64_t i) {
    return bf16 ? widen(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store_act(void *p, int bf16, int64_t i, float v) {
    if (bf16)
        ((uint16_t *)p)[i] = round_bf16(v);
    else
        ((float *)p)[i] = v;
}

#define SMALL_OP_PARALLEL (1 << 18) /* elements from which rms_norm and rotate split their rows between threads */

typedef struct {
    const void *x, *w;
    void *out;
    const float *cos, *sin;
    int64_t T, H, heads, D;
    int x_bf16, w_bf16, bf16;
    float eps;
} small_op_t;

static int small_op_avx512(void) { /* the level in use has AVX-512, and this CPU BW and VL too (every one since Skylake) */
#ifdef GPTOSS_X86
    return gptoss_mxfp4_isa() >= 2 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

static int small_op_parts(int64_t T, int64_t elements, int threads) {
    if (elements < SMALL_OP_PARALLEL) return 1;
    return parts_for(T, threads, 1);
}

#ifdef GPTOSS_X86
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) static inline __m512 widen16_masked(const uint16_t *p,
                                                                                             __mmask16 k) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
}

__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) static inline void store_bf16_masked(uint16_t *p,
                                                                                                     __mmask16 k,
                                                                                                     __m512 v) {
    _mm256_mask_storeu_epi16(p, k, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(bf16_round16(v)), 16)));
}

/* rows [t0, t1) of gptoss_rms_norm for bf16 x, 16 lanes at a time (the same products; the sum in lanes) */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void rms_rows_avx512(const small_op_t *a, int64_t t0,
                                                                                 int64_t t1) {
    const int64_t H = a->H;
    for (int64_t t = t0; t < t1; t++) {
        const uint16_t *x = (const uint16_t *)a->x + t * H;
        __m512 sum = _mm512_setzero_ps();
        for (int64_t c = 0; c < H; c += 16) {
            __m512 v = widen16_masked(x + c, H - c < 16 ? (__mmask16)((1u << (H - c)) - 1) : 0xFFFF);
            sum = _mm512_add_ps(sum, _mm512_mul_ps(v, v));
        }
        const __m512 r = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(sum) / (float)H + a->eps));
        for (int64_t c = 0; c < H; c += 16) {
            __mmask16 k = H - c < 16 ? (__mmask16)((1u << (H - c)) - 1) : 0xFFFF;
            __m512 w = a->w_bf16 ? widen16_masked((const uint16_t *)a->w + c, k)
                                 : _mm512_maskz_loadu_ps(k, (const float *)a->w + c);
            store_bf16_masked((uint16_t *)a->out + t * H + c, k, _mm512_mul_ps(_mm512_mul_ps(widen16_masked(x + c, k), r), w));
        }
    }
}
#endif

static void rms_rows(const small_op_t *a, int64_t t0, int64_t t1) {
    const int64_t H = a->H;
    for (int64_t t = t0; t < t1; t++) {
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < H; c++) {
            float v = load_act(a->x, a->x_bf16, t * H + c);
            sum += v * v;
        }
        float r = 1.0f / sqrtf(sum / (float)H + a->eps);
        for (int64_t c = 0; c < H; c++)
            store_act(a->out, a->x_bf16, t * H + c, load_act(a->x, a->x_bf16, t * H + c) * r * load_act(a->w, a->w_bf16, c));
    }
}

static void rms_part(const void *shared, int i, int n) {
    const small_op_t *a = shared;
    int64_t t0 = share_at(0, a->T, i, n), t1 = share_at(0, a->T, i + 1, n);
#ifdef GPTOSS_X86
    if (a->x_bf16 && small_op_avx512()) {
        rms_rows_avx512(a, t0, t1);
        return;
    }
#endif
    rms_rows(a, t0, t1);
}

/* out[t] = x[t] * (1 / sqrt(mean(x[t]^2) + eps)) * w in fp32, stored in x's dtype (norm.rms_norm_ref without the
   residual: the same operations; the sum of squares in another order); from SMALL_OP_PARALLEL elements the rows
   split between threads (bf16 on AVX-512 16 lanes at a time: 2048 x 1024 1.46 -> 0.42 ms, 64 x 1024
   50 -> 29 us; Zen 4 VM, 2 threads) */
void gptoss_rms_norm(const void *x, const void *w, void *out, int64_t T, int64_t H, int x_bf16, int w_bf16,
                     float eps, int threads) {
    small_op_t a = {x, w, out, NULL, NULL, T, H, 0, 0, x_bf16, w_bf16, 0, eps};
    parallel(small_op_parts(T, T * H, threads), rms_part, &a);
}

#ifdef GPTOSS_X86
/* rows [t0, t1) of gptoss_rotate, 16 lanes at a time: the same products and sums, each rounded in fp32 (no FMA) */
__attribute__((target("avx512f,avx512bw,avx512vl"), optimize("fp-contract=off"))) static void rotate_rows_avx512(
        const small_op_t *a, int64_t t0, int64_t t1) {
    const int64_t D = a->D, half = D / 2;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t h = 0; h < a->heads; h++) {
            int64_t row = (t * a->heads + h) * D;
            for (int64_t i = 0; i < half; i += 16) {
                __mmask16 k = half - i < 16 ? (__mmask16)((1u << (half - i)) - 1) : 0xFFFF;
                __m512 x1, x2;
                if (a->bf16) {
                    x1 = widen16_masked((const uint16_t *)a->x + row + i, k);
                    x2 = widen16_masked((const uint16_t *)a->x + row + half + i, k);
                } else {
                    x1 = _mm512_maskz_loadu_ps(k, (const float *)a->x + row + i);
                    x2 = _mm512_maskz_loadu_ps(k, (const float *)a->x + row + half + i);
                }
                __m512 c = _mm512_maskz_loadu_ps(k, a->cos + t * half + i), s = _mm512_maskz_loadu_ps(k, a->sin + t * half + i);
                __m512 o1 = _mm512_sub_ps(_mm512_mul_ps(x1, c), _mm512_mul_ps(x2, s));
                __m512 o2 = _mm512_add_ps(_mm512_mul_ps(x2, c), _mm512_mul_ps(x1, s));
                if (a->bf16) {
                    store_bf16_masked((uint16_t *)a->out + row + i, k, o1);
                    store_bf16_masked((uint16_t *)a->out + row + half + i, k, o2);
                } else {
                    _mm512_mask_storeu_ps((float *)a->out + row + i, k, o1);
                    _mm512_mask_storeu_ps((float *)a->out + row + half + i, k, o2);
                }
            }
        }
}
#endif

__attribute__((optimize("fp-contract=off"))) static void rotate_rows(const small_op_t *a, int64_t t0, int64_t t1) {
    const int64_t D = a->D, half = D / 2;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t h = 0; h < a->heads; h++) {
            int64_t row = (t * a->heads + h) * D;
            for (int64_t i = 0; i < half; i++) {
                float x1 = load_act(a->x, a->bf16, row + i), x2 = load_act(a->x, a->bf16, row + half + i);
                float c = a->cos[t * half + i], s = a->sin[t * half + i];
                store_act(a->out, a->bf16, row + i, x1 * c - x2 * s); /* no FMA contraction (the attribute): as torch's */
                store_act(a->out, a->bf16, row + half + i, x2 * c + x1 * s);
            }
        }
}

static void rotate_part(const void *shared, int i, int n) {
    const small_op_t *a = shared;
    int64_t t0 = share_at(0, a->T, i, n), t1 = share_at(0, a->T, i + 1, n);
#ifdef GPTOSS_X86
    if (small_op_avx512()) {
        rotate_rows_avx512(a, t0, t1);
        return;
    }
#endif
    rotate_rows(a, t0, t1);
}

/* half-split RoPE of x [T, heads, D] with cos, sin [T, D/2] fp32 into out (x's dtype): first * cos - second * sin,
   second * cos + first * sin, each product rounded in fp32 as torch's separate ops round them (reference.rotate);
   from SMALL_OP_PARALLEL elements the rows split between threads (AVX-512: 16 lanes at a time, the same bits;
   2048 tokens x 16 heads x 64 2.7 -> 0.28 ms, 64 tokens 87 -> 23 us) */
void gptoss_rotate(const void *x, void *out, const float *cos, const float *sin, int64_t T, int64_t heads, int64_t D,
                   int bf16, int threads) {
    small_op_t a = {x, NULL, out, cos, sin, T, 0, heads, D, 0, 0, bf16, 0.0f};
    parallel(small_op_parts(T, T * heads * D, threads), rotate_part, &a);
}

/* this step's k and v rows [T, row_bytes] into the cache's K and V planes at their slots (-1: skipped) */
void gptoss_write_kv(char *cache, const char *k, const char *v, const int64_t *slots, int64_t T, int64_t row_bytes,
                     int64_t plane_bytes) {
    for (int64_t t = 0; t < T; t++) {
        if (slots[t] < 0) continue;
        memcpy(cache + slots[t] * row_bytes, k + t * row_bytes, (size_t)row_bytes);
        memcpy(cache + plane_bytes + slots[t] * row_bytes, v + t * row_bytes, (size_t)row_bytes);
    }
}

int gptoss_mxfp4_max_tokens(void) { return MAX_TOKENS; }
