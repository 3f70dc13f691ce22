/* 4-bit blockwise quantize / dequantize on the CPU: the plain-torch codec's float steps, one
 * pass over memory. Compiled on first use by qlora_kernels.native (cc -O3 -march=native
 * -ffp-contract=off: no fused multiply-add, so every value is the torch path's to the bit).
 * Each call handles blocks [first, last); the caller runs ranges on its threads.
 *
 * The decode has three paths, one build carrying all of them (x86-64 with GCC or clang: the
 * vector ones are compiled for their instruction sets by target attributes, whatever -march
 * says) and the CPU's flags picking one at run time: AVX-512 (F, BW, VL, DQ; with AVX512-BF16's
 * conversion instruction where the CPU has it), AVX2, and portable C. */

#define _DEFAULT_SOURCE /* madvise */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define X86_PATHS 1
#include <immintrin.h>
#define AVX2_TARGET __attribute__((target("avx2")))
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define AVX512BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#endif

enum { PATH_BEST = 0, PATH_PORTABLE = 1, PATH_AVX2 = 2, PATH_AVX512 = 3 };

/* Bit (1 << path) set for each decode path this build can run on this CPU. */
int32_t decode_paths(void) {
    int32_t paths = 1 << PATH_PORTABLE;
#if defined(X86_PATHS)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) paths |= 1 << PATH_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512dq"))
        paths |= 1 << PATH_AVX512;
#endif
    return paths;
}

/* 1 where the AVX-512 path converts to bfloat16 with the CPU's own instruction (AVX512-BF16). */
int32_t native_bf16(void) {
#if defined(X86_PATHS)
    __builtin_cpu_init();
    return (decode_paths() >> PATH_AVX512 & 1) && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

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

/* Outputs at least this large bypass the cache (streaming stores): they would not stay in it,
 * and a plain store first reads each line it writes. */
#define STREAM_MIN_BYTES (8 << 20)

/* The portable path, and every path's tail of a block that is not a whole number of vectors. */
static inline void decode_scalar(const uint8_t *packed, const float *pairs, float scale, const float *offset,
                                 const float *zero, void *out, int64_t i, int64_t end, int32_t out_bf16) {
    for (; i < end; i++) {
        float value = pairs[2 * packed[i / 2] + (i & 1)];
        if (zero) value = value - *zero; /* HQQ: the zero point first, its own rounding */
        value = value * scale;
        if (offset) value = value + *offset;
        if (out_bf16) ((uint16_t *)out)[i] = to_bf16(value);
        else ((float *)out)[i] = value;
    }
}

#if defined(X86_PATHS)
/* 8 bytes -> 16 values (high nibble first): two 8-entry permutes pick from the 16-value table. */
AVX2_TARGET static inline void decode16(const uint8_t *bytes, __m256 low_table, __m256 high_table, __m256 scale,
                                        const float *offset, const float *zero, __m256 *first, __m256 *second) {
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
    if (zero) {
        v0 = _mm256_sub_ps(v0, _mm256_set1_ps(*zero));
        v1 = _mm256_sub_ps(v1, _mm256_set1_ps(*zero));
    }
    *first = _mm256_mul_ps(v0, scale);
    *second = _mm256_mul_ps(v1, scale);
    if (offset) { /* affine blocks: then the block's centre, added (a separate rounding, as in torch) */
        *first = _mm256_add_ps(*first, _mm256_set1_ps(*offset));
        *second = _mm256_add_ps(*second, _mm256_set1_ps(*offset));
    }
}

AVX2_TARGET static inline __m128i to_bf16x8(__m256 values) {
    __m256i bits = _mm256_castps_si256(values);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(values, values, _CMP_UNORD_Q));
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    __m256i half = _mm256_blendv_epi8(rounded, quiet, nan);
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
    return packed;
}

/* The four bytes of each table value, one 16-byte table per byte (both lanes alike): a code then
 * finds each byte of its float with one in-lane byte shuffle (vpshufb), cheap on every AVX2 CPU,
 * where a lane-crossing float permute costs three micro-ops on AMD's Zen 1. */
AVX2_TARGET static inline void byte_planes(const float *table, __m256i planes[4]) {
    uint8_t bytes[4][16];
    for (int code = 0; code < 16; code++) {
        uint32_t bits;
        memcpy(&bits, table + code, sizeof bits);
        for (int b = 0; b < 4; b++) bytes[b][code] = (uint8_t)(bits >> (8 * b));
    }
    for (int b = 0; b < 4; b++) planes[b] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)bytes[b]));
}

/* 16 bytes -> 32 table values (high nibble first), as four vectors of 8 in output order, with
 * in-lane shuffles only: the bytes are first placed (codes 0-3, 8-11, 16-19, 24-27 in the low
 * lane, the others in the high one) so that the unpacks that join each float's four bytes leave
 * every vector's values in order. */
AVX2_TARGET static inline void decode32_avx2(const uint8_t *bytes, const __m256i planes[4], __m256 values[4]) {
    const __m256i place = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 2, 3, 6, 7, 10,
                                           11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    __m256i raw = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)bytes)), place);
    __m256i codes = _mm256_unpacklo_epi8(_mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble),
                                         _mm256_and_si256(raw, nibble));
    __m256i b0 = _mm256_shuffle_epi8(planes[0], codes), b1 = _mm256_shuffle_epi8(planes[1], codes);
    __m256i b2 = _mm256_shuffle_epi8(planes[2], codes), b3 = _mm256_shuffle_epi8(planes[3], codes);
    __m256i low01 = _mm256_unpacklo_epi8(b0, b1), high01 = _mm256_unpackhi_epi8(b0, b1);
    __m256i low23 = _mm256_unpacklo_epi8(b2, b3), high23 = _mm256_unpackhi_epi8(b2, b3);
    values[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(low01, low23));
    values[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(low01, low23));
    values[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(high01, high23));
    values[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(high01, high23));
}

/* (value - zero) x scale + offset, each its own rounding; zero and offset where not NULL. */
AVX2_TARGET static inline __attribute__((always_inline)) __m256 scale8(__m256 values, float scale, const float *offset, const float *zero) {
    if (zero) values = _mm256_sub_ps(values, _mm256_set1_ps(*zero));
    values = _mm256_mul_ps(values, _mm256_set1_ps(scale));
    if (offset) values = _mm256_add_ps(values, _mm256_set1_ps(*offset));
    return values;
}

AVX2_TARGET static inline __attribute__((always_inline)) void store8(void *out, int64_t i, __m256 values, int32_t out_bf16, int stream) {
    if (out_bf16) {
        __m128i *to = (__m128i *)((uint16_t *)out + i);
        if (stream) _mm_stream_si128(to, to_bf16x8(values));
        else _mm_storeu_si128(to, to_bf16x8(values));
    } else if (stream) {
        _mm256_stream_ps((float *)out + i, values);
    } else {
        _mm256_storeu_ps((float *)out + i, values);
    }
}

/* 32 values per step: of one block for block sizes from 32, of two whole blocks for NVFP4's 16
 * (its first 16 values with the first block's constants); a last block's 16 over a multiple of 32
 * by decode16, the rest by decode_scalar. Inlined once per output type, store kind and constants
 * present (the flags constant in each copy): the per-vector tests on them cost as much as the
 * decode itself. */
#define AVX2_INLINE AVX2_TARGET static inline __attribute__((always_inline))
AVX2_INLINE void avx2_blocks(const uint8_t *packed, const float *absmax, const float *offsets, const float *zeros,
                             const float *table, const float *pairs, void *out, int64_t n, int64_t blocksize,
                             int64_t first, int64_t last, const int32_t out_bf16, const int stream, const int affine,
                             const int zeroed) {
    __m256 low_table = _mm256_loadu_ps(table), high_table = _mm256_loadu_ps(table + 8);
    __m256i planes[4];
    byte_planes(table, planes);
    for (int64_t block = first; block < last; block++) {
        int64_t start = block * blocksize, end = block_end(block, blocksize, n), i = start;
        const float *offset = affine ? offsets + block : NULL, *zero = zeroed ? zeros + block : NULL;
        __m256 values[4];
        if (blocksize == 16 && block + 1 < last && start + 32 <= n) {
            const float *offset_b = affine ? offset + 1 : NULL, *zero_b = zeroed ? zero + 1 : NULL;
            decode32_avx2(packed + i / 2, planes, values);
            store8(out, i, scale8(values[0], absmax[block], offset, zero), out_bf16, stream);
            store8(out, i + 8, scale8(values[1], absmax[block], offset, zero), out_bf16, stream);
            store8(out, i + 16, scale8(values[2], absmax[block + 1], offset_b, zero_b), out_bf16, stream);
            store8(out, i + 24, scale8(values[3], absmax[block + 1], offset_b, zero_b), out_bf16, stream);
            block++;
            continue;
        }
        for (; i + 32 <= end; i += 32) {
            decode32_avx2(packed + i / 2, planes, values);
            for (int k = 0; k < 4; k++) store8(out, i + 8 * k, scale8(values[k], absmax[block], offset, zero), out_bf16,
                                               stream);
        }
        if (i + 16 <= end) {
            __m256 first8, second8;
            decode16(packed + i / 2, low_table, high_table, _mm256_set1_ps(absmax[block]), offset, zero, &first8,
                     &second8);
            store8(out, i, first8, out_bf16, stream);
            store8(out, i + 8, second8, out_bf16, stream);
            i += 16;
        }
        decode_scalar(packed, pairs, absmax[block], offset, zero, out, i, end, out_bf16);
    }
}

AVX2_TARGET static void dequantize_avx2(const uint8_t *packed, const float *absmax, const float *offsets,
                                        const float *zeros, const float *table, const float *pairs, void *out, int64_t n,
                                        int64_t blocksize, int64_t first, int64_t last, int32_t out_bf16,
                                        int32_t may_stream) {
    const int stream = may_stream && ((uintptr_t)out & 31) == 0; /* the caller decides by size */
    const int variant = (out_bf16 ? 8 : 0) | (stream ? 4 : 0) | (offsets ? 2 : 0) | (zeros ? 1 : 0);
#define AVX2_VARIANT(V)                                                                                              \
    case V:                                                                                                          \
        avx2_blocks(packed, absmax, offsets, zeros, table, pairs, out, n, blocksize, first, last, (V) >> 3 & 1,      \
                    (V) >> 2 & 1, (V) >> 1 & 1, (V) & 1);                                                            \
        break;
    switch (variant) {
        AVX2_VARIANT(0) AVX2_VARIANT(1) AVX2_VARIANT(2) AVX2_VARIANT(3) AVX2_VARIANT(4) AVX2_VARIANT(5)
        AVX2_VARIANT(6) AVX2_VARIANT(7) AVX2_VARIANT(8) AVX2_VARIANT(9) AVX2_VARIANT(10) AVX2_VARIANT(11)
        AVX2_VARIANT(12) AVX2_VARIANT(13) AVX2_VARIANT(14) AVX2_VARIANT(15)
    }
#undef AVX2_VARIANT
    if (stream) _mm_sfence(); /* streamed stores visible before the caller reads */
}

/* 16 bytes -> 32 values (high nibble first): one 16-entry permute per 16 values. Each half has a
 * block of its own (a, b): the same block for block sizes from 32, two for NVFP4's 16. */
AVX512_TARGET static inline __m512 scale16(__m512 values, float scale, const float *offset, const float *zero) {
    if (zero) values = _mm512_sub_ps(values, _mm512_set1_ps(*zero));
    values = _mm512_mul_ps(values, _mm512_set1_ps(scale));
    if (offset) values = _mm512_add_ps(values, _mm512_set1_ps(*offset));
    return values;
}

AVX512_TARGET static inline void decode32(const uint8_t *bytes, __m512 table, float scale_a, float scale_b,
                                          const float *offset_a, const float *offset_b, const float *zero_a,
                                          const float *zero_b, __m512 *first, __m512 *second) {
    __m128i raw = _mm_loadu_si128((const __m128i *)bytes);
    __m128i high = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f));
    __m128i low = _mm_and_si128(raw, _mm_set1_epi8(0x0f));
    *first = scale16(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(high, low)), table), scale_a,
                     offset_a, zero_a);
    *second = scale16(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(high, low)), table), scale_b,
                      offset_b, zero_b);
}

/* float32 -> bfloat16 by integer rounding (to nearest even; NaN kept quiet), as to_bf16 does. */
AVX512_TARGET static inline __m256i to_bf16x16(__m512 values) {
    __m512i bits = _mm512_castps_si512(values);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmp_ps_mask(values, values, _CMP_UNORD_Q);
    __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
}

/* With AVX512-BF16: the CPU's conversion, which rounds to nearest even and quiets NaN as
 * to_bf16 does but flushes subnormal inputs to zero: a vector holding one takes the integer way. */
AVX512BF16_TARGET static inline __m256i to_bf16x16_native(__m512 values) {
    if (_mm512_fpclass_ps_mask(values, 0x20)) return to_bf16x16(values); /* 0x20: subnormal */
    return (__m256i)_mm512_cvtneps_pbh(values);
}

#define STORE32(CONVERT)                                                                                             \
    if (out_bf16) {                                                                                                  \
        __m256i *to = (__m256i *)((uint16_t *)out + i);                                                              \
        if (stream) {                                                                                                \
            _mm256_stream_si256(to, CONVERT(first16));                                                               \
            _mm256_stream_si256(to + 1, CONVERT(second16));                                                          \
        } else {                                                                                                     \
            _mm256_storeu_si256(to, CONVERT(first16));                                                               \
            _mm256_storeu_si256(to + 1, CONVERT(second16));                                                          \
        }                                                                                                            \
    } else if (stream) {                                                                                             \
        _mm512_stream_ps((float *)out + i, first16);                                                                 \
        _mm512_stream_ps((float *)out + i + 16, second16);                                                           \
    } else {                                                                                                         \
        _mm512_storeu_ps((float *)out + i, first16);                                                                 \
        _mm512_storeu_ps((float *)out + i + 16, second16);                                                           \
    }

/* Block sizes from 32: 32 values of one block per step. Block size 16 (NVFP4): two whole blocks
 * per step, each half with its own scale. */
#define DEQUANTIZE_AVX512(NAME, TARGET, CONVERT)                                                                     \
    TARGET static void NAME(const uint8_t *packed, const float *absmax, const float *offsets, const float *zeros,    \
                            const float *table, const float *pairs, void *out, int64_t n, int64_t blocksize,         \
                            int64_t first, int64_t last, int32_t out_bf16, int32_t may_stream) {                     \
        __m512 table16 = _mm512_loadu_ps(table);                                                                     \
        const int stream = may_stream && ((uintptr_t)out & 63) == 0; /* the caller decides by size */                \
        for (int64_t block = first; block < last; block++) {                                                         \
            int64_t start = block * blocksize, end = block_end(block, blocksize, n), i = start;                     \
            const float *offset = offsets ? offsets + block : NULL, *zero = zeros ? zeros + block : NULL;            \
            __m512 first16, second16;                                                                                \
            if (blocksize == 16 && block + 1 < last && start + 32 <= n) {                                            \
                decode32(packed + i / 2, table16, absmax[block], absmax[block + 1], offset,                          \
                         offsets ? offset + 1 : NULL, zero, zeros ? zero + 1 : NULL, &first16, &second16);          \
                STORE32(CONVERT)                                                                                     \
                block++;                                                                                             \
                continue;                                                                                            \
            }                                                                                                        \
            for (; i + 32 <= end; i += 32) {                                                                         \
                decode32(packed + i / 2, table16, absmax[block], absmax[block], offset, offset, zero, zero,          \
                         &first16, &second16);                                                                       \
                STORE32(CONVERT)                                                                                     \
            }                                                                                                        \
            decode_scalar(packed, pairs, absmax[block], offset, zero, out, i, end, out_bf16);                       \
        }                                                                                                            \
        if (stream) _mm_sfence();                                                                                    \
    }

DEQUANTIZE_AVX512(dequantize_avx512, AVX512_TARGET, to_bf16x16)
DEQUANTIZE_AVX512(dequantize_avx512_bf16, AVX512BF16_TARGET, to_bf16x16_native)
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

/* ---- Stored block constants decoded here, a chunk of blocks at a time, on the decoding thread:
 * no float32 tensor of all the scales is made first (a torch op over a million scales leaves
 * torch's OpenMP threads spinning on the cores this decode then runs on). Each kind repeats its
 * Python decode's float32 steps (qlora_kernels.scale_formats, double_quant), one rounding each. */
enum { SCALES_NESTED = 1, SCALES_BYTE_TABLE = 2, SCALES_HALF = 3, SCALES_HALF_ZERO = 4, SCALES_K4 = 5 };
#define SCALE_CHUNK 512 /* blocks per chunk (even: NVFP4's pairs of blocks stay whole) */

static inline float half_to_float(uint16_t half) {
#if defined(__F16C__)
    return _cvtsh_ss(half); /* exact, as the bit steps below */
#endif
    uint32_t sign = (uint32_t)(half & 0x8000u) << 16, exponent = half >> 10 & 0x1fu, mantissa = half & 0x3ffu, bits;
    if (exponent == 0x1f) bits = sign | 0x7f800000u | mantissa << 13;
    else if (exponent) bits = sign | (exponent + 112) << 23 | mantissa << 13;
    else if (mantissa) { /* subnormal: normalized */
        uint32_t shifts = 0;
        while (!(mantissa & 0x400u)) mantissa <<= 1, shifts++;
        bits = sign | (113 - shifts) << 23 | (mantissa & 0x3ffu) << 13;
    } else bits = sign;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Blocks [first, first + count): scale (and offset, zero where the kind has them). a, b, c: the
 * kind's stored tensors; table: 256 floats; x: a float32 constant (DQ's mean, the codebook's unit).
 *   NESTED      DQ: table[a[k]] x b[k / 256] + x (a: codes, b: fp32 per 256 blocks, table: the map)
 *   BYTE_TABLE  one byte per block looked up: table[a[k]] (e8m0, e4m3: the format's own decode of
 *               all 256 bytes)
 *   HALF        fp16 a[k] x x (llama.cpp's d)
 *   HALF_ZERO   HQQ: scale fp16 a[k] x x, zero fp16 b[k] / x
 *   K4          Q4_K: (fp16 d x 6-bit scale) x x, offset -(fp16 dmin x 6-bit min), per 8 blocks
 *               a = d, b = dmin, c = 12 bytes of packed scales and mins */
static void decode_scales(int32_t kind, const void *a, const void *b, const void *c, const float *table, float x,
                          int64_t first, int64_t count, float *scale, float *offset, float *zero) {
    /* a and b read per block where the kind stores them so (no pointer formed past them otherwise) */
    const uint8_t *bytes = (const uint8_t *)a;
    const uint16_t *halves = (const uint16_t *)a, *zero_halves = (const uint16_t *)b;
    switch (kind) { /* a loop per kind: no test per block */
    case SCALES_NESTED:
        for (int64_t k = 0; k < count; k++) scale[k] = table[bytes[first + k]] * ((const float *)b)[(first + k) / 256] + x;
        break;
    case SCALES_BYTE_TABLE:
        for (int64_t k = 0; k < count; k++) scale[k] = table[bytes[first + k]];
        break;
    case SCALES_HALF:
        for (int64_t k = 0; k < count; k++) scale[k] = half_to_float(halves[first + k]) * x;
        break;
    case SCALES_HALF_ZERO:
        for (int64_t k = 0; k < count; k++) {
            scale[k] = half_to_float(halves[first + k]) * x;
            zero[k] = half_to_float(zero_halves[first + k]) / x;
        }
        break;
    case SCALES_K4: /* gguf's get_scale_min, a super-block's d and dmin converted once */
        for (int64_t k = 0; k < count;) {
            int64_t block = first + k, super = block / 8;
            const uint8_t *q = (const uint8_t *)c + 12 * super;
            const float d = half_to_float(((const uint16_t *)a)[super]), dmin = half_to_float(((const uint16_t *)b)[super]);
            float sc[8], m[8]; /* the super-block's 6-bit scales and mins, unrolled */
            for (int j = 0; j < 4; j++) {
                sc[j] = (float)(q[j] & 63), m[j] = (float)(q[j + 4] & 63);
                sc[j + 4] = (float)((q[j + 8] & 0xf) | ((q[j] >> 6) << 4));
                m[j + 4] = (float)((q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4));
            }
            for (int j = (int)(block % 8); j < 8 && k < count; j++, k++) {
                scale[k] = (d * sc[j]) * x;
                offset[k] = -(dmin * m[j]);
            }
        }
        break;
    }
}

typedef void (*decode_fn)(const uint8_t *, const float *, const float *, const float *, const float *, const float *,
                          void *, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t);

static void decode_portable(const uint8_t *packed, const float *absmax, const float *offsets, const float *zeros,
                            const float *table, const float *pairs, void *out, int64_t n, int64_t blocksize,
                            int64_t first, int64_t last, int32_t out_bf16, int32_t may_stream) {
    (void)table;
    (void)may_stream;
    for (int64_t block = first; block < last; block++)
        decode_scalar(packed, pairs, absmax[block], offsets ? offsets + block : NULL, zeros ? zeros + block : NULL, out,
                      block * blocksize, block_end(block, blocksize, n), out_bf16);
}

static decode_fn pick_path(int32_t *path) {
    const int32_t paths = decode_paths();
    if (*path == PATH_BEST) *path = paths >> PATH_AVX512 & 1 ? PATH_AVX512 : paths >> PATH_AVX2 & 1 ? PATH_AVX2 : PATH_PORTABLE;
    if (!(paths >> *path & 1)) *path = PATH_PORTABLE; /* the caller checks; never run what the CPU cannot */
#if defined(X86_PATHS)
    if (*path == PATH_AVX512) return native_bf16() ? dequantize_avx512_bf16 : dequantize_avx512;
    if (*path == PATH_AVX2) return dequantize_avx2;
#endif
    return decode_portable;
}

static void pair_table(const float *table, float pairs[512]) {
    for (int byte = 0; byte < 256; byte++) {
        pairs[2 * byte] = table[byte >> 4];
        pairs[2 * byte + 1] = table[byte & 15];
    }
}

/* As dequantize_4bit, the block constants decoded from their stored form (decode_scales' kinds)
 * a chunk at a time, each chunk's values written before the next chunk's constants are decoded.
 * Whether to stream is decided once for the whole output. */
void dequantize_4bit_stored(const uint8_t *packed, int32_t kind, const void *a, const void *b, const void *c,
                            const float *scale_table, float x, const float *table, void *out, int64_t n,
                            int64_t blocksize, int64_t first, int64_t last, int32_t out_bf16, int32_t path,
                            int32_t may_stream) {
    float pairs[512], scale[SCALE_CHUNK], offset[SCALE_CHUNK], zero[SCALE_CHUNK];
    pair_table(table, pairs);
    decode_fn decode = pick_path(&path);
    const int32_t stream = may_stream && n * (out_bf16 ? 2 : 4) >= STREAM_MIN_BYTES;
    for (int64_t chunk = first; chunk < last; chunk += SCALE_CHUNK) {
        int64_t count = last - chunk < SCALE_CHUNK ? last - chunk : SCALE_CHUNK, start = chunk * blocksize;
        decode_scales(kind, a, b, c, scale_table, x, chunk, count, scale, offset, zero);
        /* the chunk as a tensor of its own: blocks from 0, its codes and output from its first value */
        decode(packed + start / 2, scale, kind == SCALES_K4 ? offset : NULL, kind == SCALES_HALF_ZERO ? zero : NULL,
               table, pairs, (char *)out + start * (out_bf16 ? 2 : 4), n - start,
               blocksize, 0, count, out_bf16, stream);
    }
}

/* out[i] = (table[code i] - zeros[block of i]) * absmax[block of i] + offsets[block of i], the zero
 * point (HQQ's) and the offset (affine centres, Q4_K's mins) only where their pointers are not NULL,
 * each step its own float32 rounding, as float32 (out_bf16 = 0) or bfloat16 (1). `path`: PATH_BEST
 * (the widest this CPU runs), or one of decode_paths() (the tests run each). */
void dequantize_4bit(const uint8_t *packed, const float *absmax, const float *offsets, const float *zeros,
                     const float *table, void *out,
                     int64_t n, int64_t blocksize, int64_t first, int64_t last, int32_t out_bf16, int32_t path,
                     int32_t may_stream) {
    float pairs[512];
    pair_table(table, pairs);
    pick_path(&path)(packed, absmax, offsets, zeros, table, pairs, out, n, blocksize, first, last, out_bf16,
                     may_stream && n * (out_bf16 ? 2 : 4) >= STREAM_MIN_BYTES);
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
