/*
 * speedups.c - the renderer's hot loops (see speedups.h). Separate from the netlink shim
 * (ipvs.c): nothing here knows IPVS, and nothing in ipvs.c knows Prometheus's text.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "speedups.h"

_Static_assert(SPEEDUPS_EINVAL == EINVAL && SPEEDUPS_ERANGE == ERANGE &&
                   SPEEDUPS_ENOBUFS == ENOBUFS,
               "speedups.h's error codes are this platform's errno values");

/* Reads in order and writes width streams: at swarm sizes width is at most a dozen. */
void speedups_transpose(void *out, const void *in, uint32_t rows, uint32_t width, uint32_t size)
{
    if (size == 8) {
        const uint64_t *src = in;
        uint64_t *dst = out;
        for (size_t r = 0; r < rows; r++)
            for (size_t c = 0; c < width; c++)
                dst[c * rows + r] = *src++;
    } else {
        const uint32_t *src = in;
        uint32_t *dst = out;
        for (size_t r = 0; r < rows; r++)
            for (size_t c = 0; c < width; c++)
                dst[c * rows + r] = *src++;
    }
}

/* a * b modulo the CRC-32 generator, both polynomials over GF(2) in reflected order (bit 31
 * is the coefficient of x^0): multiplying by x is a right shift, reduced by the generator
 * (0xEDB88320 in this order) when x^31's coefficient falls off. */
static uint32_t crc32_mul(uint32_t a, uint32_t b)
{
    uint32_t product = 0, bit = (uint32_t)1 << 31;
    while (a) {
        if (a & bit) {
            product ^= b;
            a ^= bit;
        }
        bit >>= 1;
        b = (b & 1) ? (b >> 1) ^ 0xEDB88320u : b >> 1;
    }
    return product;
}

/* crc(A+B) = crc(A) * x^(8 len(B)) + crc(B) (the register's initial and final inversions
 * cancel out in this form); x^(8 len(B)) by squaring, over the binary digits of 8 len(B). */
uint32_t speedups_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    uint32_t shift = (uint32_t)1 << 31, power = (uint32_t)1 << 30; /* 1 and x */
    for (uint64_t n = len_b << 3; n; n >>= 1) {
        if (n & 1)
            shift = crc32_mul(power, shift);
        power = crc32_mul(power, power);
    }
    return crc32_mul(shift, crc_a) ^ crc_b;
}

/* One value as prometheus_client's floatToGoString writes the float of an integer: "<int>.0"
 * below 1e6 in magnitude; from 1e6 up, Python's repr of the float with the point moved after
 * the first digit, trailing zeros dropped and exponent "e+<digits-1>" in two digits at least
 * ("e+06", "e+12"; "e+012" with zero_exponent, as older prometheus_client versions); below
 * -1e6, repr itself. Only integers below 2^53 in magnitude, where the float is exact and repr
 * is fixed-point; returns 0 for the rest (the caller formats those). */
static size_t format_value(char *out, int64_t v, int zero_exponent)
{
    char digits[24];
    uint64_t u = v < 0 ? -(uint64_t)v : (uint64_t)v;
    size_t n = 0, len = 0;
    if (u >= ((uint64_t)1 << 53))
        return 0;
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v >= 1000000) {
        size_t low = 0; /* the lowest digit after the point: trailing zeros are dropped */
        while (low < n - 1 && digits[low] == '0')
            low++;
        out[len++] = digits[n - 1];
        if (low < n - 1) {
            out[len++] = '.';
            for (size_t i = n - 1; i-- > low;)
                out[len++] = digits[i];
        }
        memcpy(out + len, "e+0", 3);
        len += n - 1 < 10 || zero_exponent ? 3 : 2;
        if (n - 1 >= 10)
            out[len++] = (char)('0' + (n - 1) / 10);
        out[len++] = (char)('0' + (n - 1) % 10);
        return len;
    }
    if (v < 0)
        out[len++] = '-';
    while (n)
        out[len++] = digits[--n];
    out[len++] = '.';
    out[len++] = '0';
    return len;
}

long speedups_format_samples(char *out, size_t cap, const char *name, size_t name_len,
                             const char *labels, const uint32_t *offsets, const void *values,
                             char kind, size_t n, int zero_exponent)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t label_len = offsets[i + 1] - offsets[i];
        int64_t v;
        switch (kind) {
        case 'Q':
            if (((const uint64_t *)values)[i] >> 63)
                return -SPEEDUPS_ERANGE;
            v = (int64_t)((const uint64_t *)values)[i];
            break;
        case 'q': v = ((const int64_t *)values)[i]; break;
        case 'I': v = ((const uint32_t *)values)[i]; break;
        case 'i': v = ((const int32_t *)values)[i]; break;
        default: return -SPEEDUPS_EINVAL;
        }
        if (cap - len < name_len + label_len + SPEEDUPS_VALUE_MAX + 1)
            return -SPEEDUPS_ENOBUFS;
        memcpy(out + len, name, name_len);
        memcpy(out + len + name_len, labels + offsets[i], label_len);
        len += name_len + label_len;
        size_t w = format_value(out + len, v, zero_exponent);
        if (!w)
            return -SPEEDUPS_ERANGE;
        len += w;
        out[len++] = '\n';
    }
    return (long)len;
}
