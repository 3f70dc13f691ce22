/* 4-bit blockwise quantize / dequantize on the CPU: the plain-torch codec's float steps, one
 * pass over memory. Compiled on first use by qlora_kernels.native (cc -O3 -march=native
 * -ffp-contract=off: no fused multiply-add, so every value is the torch path's to the bit).
 * Each call handles blocks [first, last); the caller runs ranges on its threads. */

#define _DEFAULT_SOURCE /* madvise */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

static inline uint16_t to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* NaN stays NaN */
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16); /* round to nearest even */
}

static inline int64_t block_end(int64_t block, int64_t blocksize, int64_t n) {
    int64_t end = (block + 1) * blocksize;
    return end < n ? end : n;
}

#if defined(__AVX2__)
/* 8 bytes -> 16 values (high nibble first): two 8-entry permutes pick from the 16-value table. */
static inline void decode16(const uint8_t *bytes, __m256 low_table, __m256 high_table, __m256 scale,
                            const float *offset, __m256 *first, __m256 *second) {
    __m128i raw = _mm_loadl_epi64((const __m128i *)bytes);
    __m128i high = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f));
    __m128i low = _mm_and_si128(raw, _mm_set1_epi8(0x0f));
    __m128i codes = _mm_unpacklo_epi8(high, low); /* 16 codes in output order */
    __m256i idx0 = _mm256_cvtepu8_epi32(codes);
    __m256i idx1 = _mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8));
    __m256 v0 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(low_table, idx0), _mm256_permutevar8x32_ps(high_table, idx0),
                                 _mm256_castsi256_ps(_mm256_slli_epi32(idx0, 28)));
    __m256 v1 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(low_table, idx1), _mm256_permutevar8x32_ps(high_table, idx1),
                                 _mm256_castsi256_ps(_mm256_slli_epi32(idx1, 28)));
    *first = _mm256_mul_ps(v0, scale);
    *second = _mm256_mul_ps(v1, scale);
    if (offset) { /* affine blocks: then the block's centre, added (a separate rounding, as in torch) */
        *first = _mm256_add_ps(*first, _mm256_set1_ps(*offset));
        *second = _mm256_add_ps(*second, _mm256_set1_ps(*offset));
    }
}

static inline __m128i to_bf16x8(__m256 values) {
    __m256i bits = _mm256_castps_si256(values);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(values, values, _CMP_UNORD_Q));
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    __m256i half = _mm256_blendv_epi8(rounded, quiet, nan);
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
    return packed;
}
#endif

/* Ask for transparent huge pages on the whole 2 MiB pages inside a fresh, untouched buffer: its
 * first writes then fault in 2 MiB at a time instead of 4 KiB (a 67 MB output took 26 ms of
 * page faults against 4 ms of decoding). A no-op where the system has no such advice. */
void advise_huge_pages(void *buffer, int64_t bytes) {
#if defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t start = ((uintptr_t)buffer + huge - 1) & ~(huge - 1), end = ((uintptr_t)buffer + bytes) & ~(huge - 1);
    if (end > start) madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)buffer;
    (void)bytes;
#endif
}

/* Outputs at least this large bypass the cache (streaming stores): they would not stay in it,
 * and a plain store first reads each line it writes. */
#define STREAM_MIN_BYTES (8 << 20)

/* out[i] = table[code i] * absmax[block of i] (+ offsets[block of i] where offsets is not NULL: the
 * affine data types' block centres), as float32 (out_bf16 = 0) or bfloat16 (1). */
void dequantize_4bit(const uint8_t *packed, const float *absmax, const float *offsets, const float *table, void *out,
                     int64_t n, int64_t blocksize, int64_t first, int64_t last, int32_t out_bf16) {
    float pairs[512];
    for (int byte = 0; byte < 256; byte++) {
        pairs[2 * byte] = table[byte >> 4];
        pairs[2 * byte + 1] = table[byte & 15];
    }
#if defined(__AVX2__)
    __m256 low_table = _mm256_loadu_ps(table), high_table = _mm256_loadu_ps(table + 8);
    const int stream = n * (out_bf16 ? 2 : 4) >= STREAM_MIN_BYTES && ((uintptr_t)out & 31) == 0;
#endif
    for (int64_t block = first; block < last; block++) {
        int64_t start = block * blocksize, end = block_end(block, blocksize, n), i = start;
        const float scale = absmax[block];
        const float *offset = offsets ? offsets + block : NULL;
#if defined(__AVX2__)
        __m256 scale8 = _mm256_set1_ps(scale);
        for (; i + 16 <= end; i += 16) {
            __m256 first8, second8;
            decode16(packed + i / 2, low_table, high_table, scale8, offset, &first8, &second8);
            if (out_bf16) {
                __m128i *to = (__m128i *)((uint16_t *)out + i);
                if (stream) {
                    _mm_stream_si128(to, to_bf16x8(first8));
                    _mm_stream_si128(to + 1, to_bf16x8(second8));
                } else {
                    _mm_storeu_si128(to, to_bf16x8(first8));
                    _mm_storeu_si128(to + 1, to_bf16x8(second8));
                }
            } else if (stream) {
                _mm256_stream_ps((float *)out + i, first8);
                _mm256_stream_ps((float *)out + i + 8, second8);
            } else {
                _mm256_storeu_ps((float *)out + i, first8);
                _mm256_storeu_ps((float *)out + i + 8, second8);
            }
        }
#endif
        for (; i < end; i++) {
            float value = pairs[2 * packed[i / 2] + (i & 1)] * scale;
            if (offset) value = value + *offset;
            if (out_bf16) ((uint16_t *)out)[i] = to_bf16(value);
            else ((float *)out)[i] = value;
        }
    }
#if defined(__AVX2__)
    if (stream) _mm_sfence(); /* streamed stores visible before the caller reads */
#endif
}

/* Per block: absmax, weight * (1 / absmax) (a short last block: weight / absmax), clamped to
 * [-1, 1], the code of the nearest value (count of sorted midpoints below it, a tie going to the
 * lower value), two codes per byte, an odd last code padded with pad_code. */
void quantize_4bit(const float *weight, const float *midpoints, const uint8_t *order, uint8_t pad_code,
                   uint8_t *packed, float *absmax, int64_t n, int64_t blocksize, int64_t first, int64_t last) {
    for (int64_t block = first; block < last; block++) {
        int64_t start = block * blocksize, end = block_end(block, blocksize, n);
        const float *x = weight + start;
        int64_t count = end - start;
        uint32_t top_bits = 0; /* the max of |x| on the bits: same order for floats >= 0, vectorizes, keeps NaN */
        for (int64_t i = 0; i < count; i++) {
            uint32_t bits;
            memcpy(&bits, x + i, sizeof bits);
            bits &= 0x7fffffffu;
            top_bits = bits > top_bits ? bits : top_bits;
        }
        float top;
        memcpy(&top, &top_bits, sizeof top);
        const int full = count == blocksize;
        const float floor_ = fmaxf(top, 1e-38f), inverse = 1.0f / floor_;
        absmax[block] = full ? top : floor_;
        float scaled[4096];
        int32_t position[4096];
        if (full) for (int64_t i = 0; i < count; i++) scaled[i] = x[i] * inverse;
        else for (int64_t i = 0; i < count; i++) scaled[i] = x[i] / floor_;
        for (int64_t i = 0; i < count; i++) {
            scaled[i] = scaled[i] < -1.0f ? -1.0f : (scaled[i] > 1.0f ? 1.0f : scaled[i]);
            position[i] = 0;
        }
        for (int m = 0; m < 15; m++) /* midpoint by midpoint: each pass vectorizes */
            for (int64_t i = 0; i < count; i++) position[i] += midpoints[m] < scaled[i];
        uint8_t codes[4096];
        for (int64_t i = 0; i < count; i++) codes[i] = order[position[i]];
        uint8_t *bytes = packed + start / 2;
        for (int64_t i = 0; i + 1 < count; i += 2) bytes[i / 2] = (uint8_t)(codes[i] << 4 | codes[i + 1]);
        if (count & 1) bytes[count / 2] = (uint8_t)(codes[count - 1] << 4 | pad_code);
    }
}
