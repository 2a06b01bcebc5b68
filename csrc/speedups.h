/*
 * speedups.h - the renderer's hot loops in C: transposing row blocks, joining CRC-32s,
 * writing sample lines. Pure functions over caller-owned memory: no allocation, no libnl,
 * no system call. Fed verbatim to cffi's cdef, so it holds declarations only: no
 * #include, no #if, no macros but integer constants.
 */

/* A block of rows x width items of size bytes (4 or 8) laid out row by row, written column
 * by column into out (item (r, c) to out[c * rows + r]), so that a column is contiguous.
 * Transposing back is the same call with rows and width swapped. */
void speedups_transpose(void *out, const void *in, uint32_t rows, uint32_t width, uint32_t size);

/* The CRC-32 (zlib's) of A+B from crc(A), crc(B) and len(B), as zlib's crc32_combine: for a
 * gzip member laid together from text compressed in separate pieces. */
uint32_t speedups_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/* speedups_format_samples' errors, each distinct (negated errno values on Linux). */
#define SPEEDUPS_EINVAL    22  /* kind is none of 'Q', 'q', 'I', 'i' */
#define SPEEDUPS_ERANGE    34  /* a value is 2^53 or more in magnitude: the caller formats it */
#define SPEEDUPS_ENOBUFS   105 /* out is too small for the lines */
#define SPEEDUPS_VALUE_MAX 24  /* bytes one value takes at most */

/* Sample lines "<name><labels[i]><value>\n" for n series into out (cap bytes): label i is
 * labels[offsets[i] .. offsets[i + 1]), value i is values[i], an array of kind 'Q' (uint64),
 * 'q' (int64), 'I' (uint32) or 'i' (int32), written as prometheus_client writes the float of
 * an integer (zero_exponent: a 0 before every exponent, "e+012", as older versions write it).
 * Returns the bytes written, or -SPEEDUPS_ERANGE when a value is 2^53 or more in magnitude
 * (its float is not exact), -SPEEDUPS_ENOBUFS when out is too small, -SPEEDUPS_EINVAL for an
 * unknown kind; cap >= n * (name_len + SPEEDUPS_VALUE_MAX + 1) + the labels' length is
 * always enough. */
long speedups_format_samples(char *out, size_t cap, const char *name, size_t name_len,
                             const char *labels, const uint32_t *offsets, const void *values,
                             char kind, size_t n, int zero_exponent);
