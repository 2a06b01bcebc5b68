/* bench/cdump.c: the bench's floor - a bare IPVS dump through libnl-genl-3 that stores nothing.
 *
 *   cdump NETNS_PATH        (then one line on stdin per round)
 *
 * Joins the namespace once, then for every line read on stdin does one IPVS_CMD_GET_SERVICE
 * dump and one IPVS_CMD_GET_DEST dump per service, and prints "SECONDS SERVICES DESTS".
 * Only each service's key (fwmark, or protocol/address/port) is kept between the two dumps,
 * because a destination dump must name its service; counters are parsed and dropped. The
 * round is timed inside the process, so no process start-up is in a figure, and the bench
 * can send traffic between rounds.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/ip_vs.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/netlink.h>

struct svc_key {
    unsigned af, protocol, fwmark;
    unsigned short port;
    unsigned char addr[16];
};

struct round {
    struct svc_key *keys;
    size_t n, cap;
    size_t dests;
    unsigned long long sink; /* counters are summed here so the parse cannot be skipped */
};

static struct nla_policy svc_policy[IPVS_SVC_ATTR_MAX + 1] = {
    [IPVS_SVC_ATTR_AF] = {.type = NLA_U16},      [IPVS_SVC_ATTR_PROTOCOL] = {.type = NLA_U16},
    [IPVS_SVC_ATTR_ADDR] = {.type = NLA_UNSPEC}, [IPVS_SVC_ATTR_PORT] = {.type = NLA_U16},
    [IPVS_SVC_ATTR_FWMARK] = {.type = NLA_U32},  [IPVS_SVC_ATTR_STATS64] = {.type = NLA_NESTED},
};

static struct nla_policy dest_policy[IPVS_DEST_ATTR_MAX + 1] = {
    [IPVS_DEST_ATTR_ADDR] = {.type = NLA_UNSPEC},
    [IPVS_DEST_ATTR_PORT] = {.type = NLA_U16},
    [IPVS_DEST_ATTR_ACTIVE_CONNS] = {.type = NLA_U32},
    [IPVS_DEST_ATTR_INACT_CONNS] = {.type = NLA_U32},
    [IPVS_DEST_ATTR_STATS64] = {.type = NLA_NESTED},
};

static unsigned long long sum_stats64(struct nlattr *nest)
{
    struct nlattr *a;
    int rem;
    unsigned long long s = 0;
    if (!nest)
        return 0;
    nla_for_each_nested(a, nest, rem) s += nla_get_u64(a);
    return s;
}

static int on_service(struct nl_msg *msg, void *arg)
{
    struct round *r = arg;
    struct nlattr *top[IPVS_CMD_ATTR_MAX + 1], *svc[IPVS_SVC_ATTR_MAX + 1];
    if (genlmsg_parse(nlmsg_hdr(msg), 0, top, IPVS_CMD_ATTR_MAX, NULL) < 0 ||
        !top[IPVS_CMD_ATTR_SERVICE])
        return NL_SKIP;
    if (nla_parse_nested(svc, IPVS_SVC_ATTR_MAX, top[IPVS_CMD_ATTR_SERVICE], svc_policy) < 0)
        return NL_SKIP;
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 1024;
        r->keys = realloc(r->keys, r->cap * sizeof *r->keys);
        if (!r->keys) {
            perror("cdump: realloc");
            exit(1);
        }
    }
    struct svc_key *k = &r->keys[r->n++];
    memset(k, 0, sizeof *k);
    k->af = svc[IPVS_SVC_ATTR_AF] ? nla_get_u16(svc[IPVS_SVC_ATTR_AF]) : 0;
    if (svc[IPVS_SVC_ATTR_FWMARK])
        k->fwmark = nla_get_u32(svc[IPVS_SVC_ATTR_FWMARK]);
    if (svc[IPVS_SVC_ATTR_PROTOCOL])
        k->protocol = nla_get_u16(svc[IPVS_SVC_ATTR_PROTOCOL]);
    if (svc[IPVS_SVC_ATTR_PORT])
        k->port = nla_get_u16(svc[IPVS_SVC_ATTR_PORT]);
    if (svc[IPVS_SVC_ATTR_ADDR])
        nla_memcpy(k->addr, svc[IPVS_SVC_ATTR_ADDR], sizeof k->addr);
    r->sink += sum_stats64(svc[IPVS_SVC_ATTR_STATS64]);
    return NL_OK;
}

static int on_dest(struct nl_msg *msg, void *arg)
{
    struct round *r = arg;
    struct nlattr *top[IPVS_CMD_ATTR_MAX + 1], *d[IPVS_DEST_ATTR_MAX + 1];
    if (genlmsg_parse(nlmsg_hdr(msg), 0, top, IPVS_CMD_ATTR_MAX, NULL) < 0 ||
        !top[IPVS_CMD_ATTR_DEST])
        return NL_SKIP;
    if (nla_parse_nested(d, IPVS_DEST_ATTR_MAX, top[IPVS_CMD_ATTR_DEST], dest_policy) < 0)
        return NL_SKIP;
    r->dests++;
    r->sink += sum_stats64(d[IPVS_DEST_ATTR_STATS64]);
    if (d[IPVS_DEST_ATTR_ACTIVE_CONNS])
        r->sink += nla_get_u32(d[IPVS_DEST_ATTR_ACTIVE_CONNS]);
    if (d[IPVS_DEST_ATTR_INACT_CONNS])
        r->sink += nla_get_u32(d[IPVS_DEST_ATTR_INACT_CONNS]);
    return NL_OK;
}

/* One dump request; its callback fills r. 0 or a libnl error. */
static int dump(struct nl_sock *sk, int family, int cmd, const struct svc_key *key, struct round *r)
{
    struct nl_msg *msg = nlmsg_alloc();
    int err = -NLE_NOMEM;
    if (!msg)
        return err;
    if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, NLM_F_DUMP, cmd, IPVS_GENL_VERSION))
        goto out;
    if (key) {
        struct nlattr *nest = nla_nest_start(msg, IPVS_CMD_ATTR_SERVICE);
        if (!nest)
            goto out;
        NLA_PUT_U16(msg, IPVS_SVC_ATTR_AF, key->af);
        if (key->fwmark) {
            NLA_PUT_U32(msg, IPVS_SVC_ATTR_FWMARK, key->fwmark);
        } else {
            NLA_PUT_U16(msg, IPVS_SVC_ATTR_PROTOCOL, key->protocol);
            NLA_PUT(msg, IPVS_SVC_ATTR_ADDR, sizeof key->addr, key->addr);
            NLA_PUT_U16(msg, IPVS_SVC_ATTR_PORT, key->port);
        }
        nla_nest_end(msg, nest);
    }
    nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, key ? on_dest : on_service, r);
    err = nl_send_auto(sk, msg);
    if (err >= 0)
        err = nl_recvmsgs_default(sk);
out:
nla_put_failure:
    nlmsg_free(msg);
    return err < 0 ? err : 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: cdump NETNS_PATH  (one line on stdin per dump)\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
        perror("cdump: join the namespace");
        return 1;
    }
    close(fd);
    struct nl_sock *sk = nl_socket_alloc();
    if (!sk || genl_connect(sk) < 0) {
        fprintf(stderr, "cdump: cannot open a generic netlink socket\n");
        return 1;
    }
    nl_socket_set_buffer_size(sk, 1 << 20, 0);
    int family = genl_ctrl_resolve(sk, IPVS_GENL_NAME);
    if (family < 0) {
        fprintf(stderr, "cdump: no IPVS generic netlink family: %s\n", nl_geterror(family));
        return 1;
    }
    struct round r = {0};
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        struct timespec t0, t1;
        r.n = r.dests = 0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int err = dump(sk, family, IPVS_CMD_GET_SERVICE, NULL, &r);
        for (size_t i = 0; !err && i < r.n; i++)
            err = dump(sk, family, IPVS_CMD_GET_DEST, &r.keys[i], &r);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (err) {
            fprintf(stderr, "cdump: dump failed: %s\n", nl_geterror(err));
            return 1;
        }
        printf("%.9f %zu %zu %llu\n", (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9,
               r.n, r.dests, r.sink);
        fflush(stdout);
    }
    return 0;
}
