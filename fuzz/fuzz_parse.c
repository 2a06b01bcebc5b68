/*
 * fuzz_parse.c - libFuzzer target for the shim's message parser, ipvs_parse_message().
 *
 * Built by fuzz/run.sh with clang -fsanitize=fuzzer,address,undefined, linking
 * csrc/ipvs.c itself (instrumented) and the system's libnl-genl-3 (not instrumented).
 *
 * Input format (the seed corpus in tests/fuzz/corpus/ uses it too):
 *
 *   byte 0, bit 7 clear - one message: kind = bits 0-1 (0 service, 1 destination,
 *                         2 GET_CONFIG reply, 3 GET_DAEMON reply), the rest of the
 *                         input is the message.
 *   byte 0, bit 7 set   - several messages: bits 0-6 = extra passes (0..127); then
 *                         records [kind:1 (bits 0-1)][len:2, little endian][len bytes]
 *                         (a short last record takes what is left). Every pass feeds
 *                         all records again into the same handle, so rows accumulate
 *                         and the arrays grow past their first capacity (64 services,
 *                         256 destinations). At most MAX_MESSAGES are fed in all.
 *
 * Each message is fed twice, to two handles:
 *   - from an exact-size malloc()ed copy: ASan flags any read past `len` by the shim
 *     or by a libc call it makes (memcpy, ...);
 *   - from a copy that ends at a PROT_NONE guard page (start kept 4-aligned, so at most
 *     3 bytes of slack): libnl itself is not instrumented, and a read by genlmsg_parse /
 *     nla_parse past the message's end faults there (SEGV, which libFuzzer reports).
 * Both handles must end with the same return codes and identical arrays and settings, and
 * the arrays and settings must satisfy the shim's invariants (else abort()). Handles are closed
 * every iteration, so LeakSanitizer sees any leak.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ipvs.h"

#define GUARD_AREA (1u << 20) /* larger than any input libFuzzer will give us */
/* At most this many messages per input (all passes): enough to outgrow the first
 * capacities, few enough that a mutated pass count cannot make one input take long. */
#define MAX_MESSAGES 512

static uint8_t *guard_end; /* first byte of the PROT_NONE page */

static void setup_guard(void)
{
    long page = sysconf(_SC_PAGESIZE);
    uint8_t *base = mmap(NULL, GUARD_AREA + (size_t)page, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        abort();
    }
    guard_end = base + GUARD_AREA;
    if (mprotect(guard_end, (size_t)page, PROT_NONE) != 0) {
        perror("mprotect");
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setup_guard();
    return 0;
}

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_parse: invariant violated: %s\n", what);
    abort();
}

/* The errno values the parser may return; anything else is a bug. */
static void check_rc(int rc)
{
    if (rc > 0)
        fail("positive return code");
    if (rc < -4095)
        fail("return code is not a negative errno");
}

/* Read every row (ASan checks each access against the arrays' real size) and check
 * the invariants a caller relies on. Returns a checksum so nothing is optimised out. */
static uint64_t check_handle(const struct ipvs_handle *h)
{
    uint64_t sum = 0, dests = 0;
    uint32_t i, j;
    for (i = 0; i < h->n_svc; i++) {
        const uint32_t *row = h->svc_u32 + (size_t)i * IPVS_SVC_NCOLS;
        const char *sched = h->svc_sched + (size_t)i * IPVS_NAME_LEN;
        uint32_t first = row[IPVS_SVC_DEST_FIRST], count = row[IPVS_SVC_DEST_COUNT];
        for (j = 0; j < IPVS_SVC_NCOLS; j++)
            sum += row[j];
        for (j = 0; j < IPVS_NSTATS; j++)
            sum += h->svc_stats[(size_t)i * IPVS_NSTATS + j];
        for (j = 0; j < IPVS_ADDR_LEN; j++)
            sum += h->svc_addr[(size_t)i * IPVS_ADDR_LEN + j];
        if (memchr(sched, 0, IPVS_NAME_LEN) == NULL)
            fail("scheduler name not NUL-terminated");
        if (row[IPVS_SVC_PORT] > 0xffff)
            fail("service port wider than 16 bits");
        if (first > h->n_dst || count > h->n_dst - first)
            fail("service destination range outside the destination rows");
        for (j = first; j < first + count; j++)
            if (h->dst_u32[(size_t)j * IPVS_DST_NCOLS + IPVS_DST_SVC] != i)
                fail("destination in a service's range names another service");
        dests += count;
    }
    if (dests > h->n_dst)
        fail("more destinations counted than rows");
    if (h->settings.n_daemons > IPVS_MAX_DAEMONS)
        fail("more daemons than the settings hold");
    for (i = 0; i < h->settings.n_daemons; i++) {
        const struct ipvs_daemon *d = &h->settings.daemons[i];
        if (memchr(d->mcast_ifn, 0, IPVS_IFNAME_LEN) == NULL)
            fail("daemon interface name not NUL-terminated");
        sum += d->state + d->sync_id;
    }
    sum += h->settings.timeout_tcp + h->settings.timeout_tcp_fin + h->settings.timeout_udp;
    for (i = 0; i < h->n_dst; i++) {
        const uint32_t *row = h->dst_u32 + (size_t)i * IPVS_DST_NCOLS;
        for (j = 0; j < IPVS_DST_NCOLS; j++)
            sum += row[j];
        for (j = 0; j < IPVS_NSTATS; j++)
            sum += h->dst_stats[(size_t)i * IPVS_NSTATS + j];
        for (j = 0; j < IPVS_ADDR_LEN; j++)
            sum += h->dst_addr[(size_t)i * IPVS_ADDR_LEN + j];
        if (row[IPVS_DST_PORT] > 0xffff)
            fail("destination port wider than 16 bits");
        if (row[IPVS_DST_FWD] > 7)
            fail("forwarding method outside IP_VS_CONN_F_FWD_MASK");
        if (h->n_svc && row[IPVS_DST_SVC] >= h->n_svc)
            fail("destination names a service row that does not exist");
    }
    return sum;
}

static int same_arrays(const struct ipvs_handle *a, const struct ipvs_handle *b)
{
    size_t ns = a->n_svc, nd = a->n_dst;
    if (a->n_svc != b->n_svc || a->n_dst != b->n_dst || a->stats64 != b->stats64)
        return 0;
    if (memcmp(&a->settings, &b->settings, sizeof(a->settings)))
        return 0;
    if (ns && (memcmp(a->svc_u32, b->svc_u32, ns * IPVS_SVC_NCOLS * 4) ||
               memcmp(a->svc_stats, b->svc_stats, ns * IPVS_NSTATS * 8) ||
               memcmp(a->svc_addr, b->svc_addr, ns * IPVS_ADDR_LEN) ||
               memcmp(a->svc_sched, b->svc_sched, ns * IPVS_NAME_LEN)))
        return 0;
    if (nd && (memcmp(a->dst_u32, b->dst_u32, nd * IPVS_DST_NCOLS * 4) ||
               memcmp(a->dst_stats, b->dst_stats, nd * IPVS_NSTATS * 8) ||
               memcmp(a->dst_addr, b->dst_addr, nd * IPVS_ADDR_LEN)))
        return 0;
    return 1;
}

/* Feed one message to both handles. */
static void feed(struct ipvs_handle *heap_h, struct ipvs_handle *guard_h, int kind,
                 const uint8_t *msg, size_t len)
{
    /* malloc(0) may return NULL; give ASan a real (empty) object then. */
    uint8_t *copy = malloc(len ? len : 1);
    uint8_t *g;
    int rc1, rc2;
    if (!copy)
        abort();
    if (len)
        memcpy(copy, msg, len);
    rc1 = ipvs_parse_message(heap_h, (enum ipvs_msg_kind)kind, copy, len);
    free(copy);

    if (len > GUARD_AREA)
        abort();
    g = (uint8_t *)((uintptr_t)(guard_end - len) & ~(uintptr_t)3);
    memset(g + len, 0xa5, (size_t)(guard_end - (g + len))); /* slack: never read */
    if (len)
        memcpy(g, msg, len);
    rc2 = ipvs_parse_message(guard_h, (enum ipvs_msg_kind)kind, g, len);

    check_rc(rc1);
    if (rc1 != rc2)
        fail("same message, different return codes");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ipvs_handle *a = NULL, *b = NULL;
    volatile uint64_t sink;
    if (size < 1)
        return 0;
    if (ipvs_handle_new_offline(&a) || ipvs_handle_new_offline(&b))
        abort();

    if (!(data[0] & 0x80)) {
        feed(a, b, data[0] & 3, data + 1, size - 1);
    } else {
        unsigned passes = (data[0] & 0x7f) + 1u, p, fed = 0;
        for (p = 0; p < passes; p++) {
            size_t off = 1;
            while (off + 3 <= size && fed++ < MAX_MESSAGES) {
                int kind = data[off] & 3;
                size_t len = (size_t)data[off + 1] | ((size_t)data[off + 2] << 8);
                off += 3;
                if (len > size - off)
                    len = size - off;
                feed(a, b, kind, data + off, len);
                off += len;
            }
        }
    }

    if (!same_arrays(a, b))
        fail("same messages, different arrays");
    sink = check_handle(a);
    /* what ipvs_dump() does: one row per service and per real server of a service, the
     * invariants still hold */
    {
        uint32_t n_svc = a->n_svc, i, j;
        check_rc(ipvs_drop_duplicates(a));
        if (a->n_svc > n_svc)
            fail("dropping duplicates added service rows");
        sink += check_handle(a);
        for (i = 0; i < a->n_svc; i++)
            for (j = i + 1; j < a->n_svc; j++) {
                const uint32_t *x = a->svc_u32 + (size_t)i * IPVS_SVC_NCOLS,
                               *y = a->svc_u32 + (size_t)j * IPVS_SVC_NCOLS;
                if (x[IPVS_SVC_AF] == y[IPVS_SVC_AF] && x[IPVS_SVC_FWMARK] == y[IPVS_SVC_FWMARK] &&
                    (x[IPVS_SVC_FWMARK] ||
                     (x[IPVS_SVC_PROTOCOL] == y[IPVS_SVC_PROTOCOL] &&
                      x[IPVS_SVC_PORT] == y[IPVS_SVC_PORT] &&
                      !memcmp(a->svc_addr + (size_t)i * IPVS_ADDR_LEN,
                              a->svc_addr + (size_t)j * IPVS_ADDR_LEN, IPVS_ADDR_LEN))))
                    fail("a service left twice after dropping duplicates");
            }
        for (i = 0; i < a->n_svc; i++) {
            const uint32_t *row = a->svc_u32 + (size_t)i * IPVS_SVC_NCOLS;
            uint32_t first = row[IPVS_SVC_DEST_FIRST], end = first + row[IPVS_SVC_DEST_COUNT], k;
            for (j = first; j < end; j++)
                for (k = j + 1; k < end; k++) {
                    const uint32_t *x = a->dst_u32 + (size_t)j * IPVS_DST_NCOLS,
                                   *y = a->dst_u32 + (size_t)k * IPVS_DST_NCOLS;
                    if (x[IPVS_DST_AF] == y[IPVS_DST_AF] && x[IPVS_DST_PORT] == y[IPVS_DST_PORT] &&
                        !memcmp(a->dst_addr + (size_t)j * IPVS_ADDR_LEN,
                                a->dst_addr + (size_t)k * IPVS_ADDR_LEN, IPVS_ADDR_LEN))
                        fail("a real server left twice in a service after dropping duplicates");
                }
        }
    }
    (void)sink;
    ipvs_close(a);
    ipvs_close(b);
    return 0;
}
