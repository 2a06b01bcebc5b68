/*
 * dumploop.c - drive the shim against the real kernel many times, for valgrind and ASan.
 *
 *   dumploop NETNS_PATH DUMPS [REOPENS]
 *
 * Opens one handle on NETNS_PATH ("" = this namespace) and dumps DUMPS times (plus
 * ipvs_get_info and ipvs_get_settings every 100th, the kernel answering both queries), closes it,
 * then REOPENS times opens a fresh handle, dumps once and closes it again. Every dump must see the
 * same number of services and destinations as the first. Prints one summary line; exits 0 on
 * success, 1 on any shim error or disagreement, 2 on bad usage. Built with -g and no sanitizer by
 * tests/kernel/test_leaks_kernel.py, which runs it under valgrind; it links
 * csrc/ipvs.c directly (gcc -Icsrc fuzz/dumploop.c csrc/ipvs.c -lnl-genl-3 -lnl-3).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ipvs.h"

static int check(const struct ipvs_handle *h, uint32_t *svc, uint32_t *dst, long i)
{
    uint32_t k, sum = 0;
    if (*svc == UINT32_MAX) {
        *svc = h->n_svc;
        *dst = h->n_dst;
    }
    if (h->n_svc != *svc || h->n_dst != *dst) {
        fprintf(stderr, "dumploop: dump %ld saw %u services / %u destinations, the first %u / %u\n",
                i, h->n_svc, h->n_dst, *svc, *dst);
        return 1;
    }
    for (k = 0; k < h->n_svc; k++)
        sum += h->svc_u32[(size_t)k * IPVS_SVC_NCOLS + IPVS_SVC_DEST_COUNT];
    if (sum != h->n_dst) {
        fprintf(stderr, "dumploop: dump %ld: destination counts add up to %u, not %u\n", i, sum,
                h->n_dst);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct ipvs_handle *h = NULL;
    uint32_t svc = UINT32_MAX, dst = 0, version = 0, tab = 0;
    long dumps, reopens, i;
    int rc;
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s NETNS_PATH DUMPS [REOPENS]\n", argv[0]);
        return 2;
    }
    dumps = strtol(argv[2], NULL, 10);
    reopens = argc > 3 ? strtol(argv[3], NULL, 10) : 0;

    if ((rc = ipvs_open(argv[1], &h))) {
        fprintf(stderr, "dumploop: ipvs_open(%s): %s\n", argv[1], strerror(-rc));
        return 1;
    }
    for (i = 0; i < dumps; i++) {
        if ((rc = ipvs_dump(h))) {
            fprintf(stderr, "dumploop: dump %ld: %s\n", i, strerror(-rc));
            ipvs_close(h);
            return 1;
        }
        if (check(h, &svc, &dst, i)) {
            ipvs_close(h);
            return 1;
        }
        if (i % 100 == 0 && (rc = ipvs_get_info(h, &version, &tab))) {
            fprintf(stderr, "dumploop: get_info: %s\n", strerror(-rc));
            ipvs_close(h);
            return 1;
        }
        if (i % 100 == 0 && ((rc = ipvs_get_settings(h)) || (rc = h->settings.config_err) ||
                             (rc = h->settings.daemon_err))) {
            fprintf(stderr, "dumploop: get_settings: %s\n", strerror(-rc));
            ipvs_close(h);
            return 1;
        }
    }
    ipvs_close(h);

    for (i = 0; i < reopens; i++) {
        if ((rc = ipvs_open(argv[1], &h))) {
            fprintf(stderr, "dumploop: reopen %ld: %s\n", i, strerror(-rc));
            return 1;
        }
        rc = ipvs_dump(h);
        if (rc)
            fprintf(stderr, "dumploop: dump after reopen %ld: %s\n", i, strerror(-rc));
        else
            rc = check(h, &svc, &dst, dumps + i);
        ipvs_close(h);
        if (rc)
            return 1;
    }
    printf(
        "dumploop: dumps=%ld reopens=%ld services=%u destinations=%u version=0x%06x conn_tab=%u\n",
        dumps, reopens, svc == UINT32_MAX ? 0 : svc, dst, version, tab);
    return 0;
}
