/*
 * ipvs.c - read IPVS over generic netlink (libnl-genl-3) into flat arrays.
 *
 * All attribute parsing happens here; Python only reads the arrays. Every function
 * returning int returns 0 or a negative errno (libnl's NLE_* codes are mapped); none
 * prints or exits. libnl's callbacks are C functions: no Python callbacks.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <linux/ip_vs.h>
#include <linux/nsfs.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/netlink.h>
#include <netlink/version.h>

#include "ipvs.h"

#define RCVBUF_BYTES   (8 * 1024 * 1024)
#define MSGBUF_BYTES   (64 * 1024)
#define RECV_TIMEOUT_S 10
/* From this many services on, a dump asks for the second half's destinations on a second
 * socket in a second thread: the kernel fills one reply while this thread parses another. */
#define SPLIT_MIN_SERVICES 512
#define SYSCTL_DIR         "/proc/sys/net/ipv4/vs"

/* read_stats stores attribute type t at column t - 1: the columns ipvs.h names must be the
 * kernel's attribute types minus one, and IPVS_NSTATS must cover the last of them. */
_Static_assert(IPVS_ST_CONNS == IPVS_STATS_ATTR_CONNS - 1, "stats column: conns");
_Static_assert(IPVS_ST_INPKTS == IPVS_STATS_ATTR_INPKTS - 1, "stats column: inpkts");
_Static_assert(IPVS_ST_OUTPKTS == IPVS_STATS_ATTR_OUTPKTS - 1, "stats column: outpkts");
_Static_assert(IPVS_ST_INBYTES == IPVS_STATS_ATTR_INBYTES - 1, "stats column: inbytes");
_Static_assert(IPVS_ST_OUTBYTES == IPVS_STATS_ATTR_OUTBYTES - 1, "stats column: outbytes");
_Static_assert(IPVS_ST_CPS == IPVS_STATS_ATTR_CPS - 1, "stats column: cps");
_Static_assert(IPVS_ST_INPPS == IPVS_STATS_ATTR_INPPS - 1, "stats column: inpps");
_Static_assert(IPVS_ST_OUTPPS == IPVS_STATS_ATTR_OUTPPS - 1, "stats column: outpps");
_Static_assert(IPVS_ST_INBPS == IPVS_STATS_ATTR_INBPS - 1, "stats column: inbps");
_Static_assert(IPVS_ST_OUTBPS == IPVS_STATS_ATTR_OUTBPS - 1, "stats column: outbps");
_Static_assert(IPVS_NSTATS == IPVS_STATS_ATTR_OUTBPS, "IPVS_NSTATS: one column per counter");

/* The integer settings of /proc/sys/net/ipv4/vs that change how IPVS treats connections
 * (index = the sysctl arrays' index). Files holding several values or text are left out. */
static const char *const sysctl_names[IPVS_NSYSCTL] = {
    "conn_reuse_mode", "expire_nodest_conn", "expire_quiescent_template",
    "conntrack",       "sloppy_tcp",         "sloppy_sctp",
    "schedule_icmp",   "ignore_tunneled",    "run_estimation",
    "backup_only",     "cache_bypass",       "drop_entry",
    "drop_packet",     "secure_tcp",         "nat_icmp_send",
    "pmtu_disc",       "snat_reroute",       "sync_version",
    "sync_ports",      "sync_persist_mode",
};

struct priv {
    struct nl_sock *sk;
    int family;
    uint32_t cap_svc, cap_dst;
    int cb_err;       /* first error seen inside a callback (negative errno) */
    uint32_t cur_svc; /* service row that GET_DEST replies belong to */
    uint32_t info_version, info_tab_size;
    uint32_t *slots, cap_slots; /* hash table reused by the duplicate-dropping passes */
    char *path;                 /* the namespace file ipvs_open entered ("" = the caller's) */
    /* A second handle on the same namespace (its own socket and arrays) that reads the
     * destinations of the second half of a large dump; NULL for offline handles. */
    struct ipvs_handle *helper;
};

/* ---- error mapping ------------------------------------------------------ */

static int nle_to_errno(int nle)
{
    switch (nle < 0 ? -nle : nle) {
    case 0: return 0;
    case NLE_NOMEM: return -ENOMEM;
    case NLE_PERM: return -EPERM;
    case NLE_NOACCESS: return -EACCES;
    case NLE_OBJ_NOTFOUND: return -ENOENT;
    case NLE_AGAIN: return -EAGAIN;
    case NLE_INTR: return -EINTR;
    case NLE_BAD_SOCK: return -EBADF;
    case NLE_INVAL: return -EINVAL;
    case NLE_RANGE: return -ERANGE;
    case NLE_MSGSIZE: return -EMSGSIZE;
    case NLE_OPNOTSUPP: return -EOPNOTSUPP;
    case NLE_AF_NOSUPPORT: return -EAFNOSUPPORT;
    case NLE_PROTO_MISMATCH: return -EPROTO;
    case NLE_NOADDR: return -EADDRNOTAVAIL;
    case NLE_BUSY: return -EBUSY;
    case NLE_EXIST: return -EEXIST;
    case NLE_MSG_TRUNC: return -EMSGSIZE;
    case NLE_MSG_TOOSHORT: return -EBADMSG; /* shorter than its headers */
    case NLE_SEQ_MISMATCH: return -EILSEQ;
    case NLE_DUMP_INTR: return -EINTR;
    case NLE_NODEV: return -ENODEV;
    case NLE_IMMUTABLE: return -EROFS;
    default: return -EIO;
    }
}

/* ---- array management --------------------------------------------------- */

static int grow(void **p, uint32_t cap, size_t row)
{
    void *n = realloc(*p, (size_t)cap * row);
    if (!n)
        return -ENOMEM;
    *p = n;
    return 0;
}

/* A block's capacity for at least `need` rows, doubling from `initial`: every array of
 * the block grows together. */
struct block_array {
    void **p;
    size_t row;
};

static int reserve_rows(uint32_t *cap_io, uint32_t initial, uint32_t need,
                        const struct block_array *arrays, int n)
{
    uint32_t cap = *cap_io ? *cap_io : initial;
    if (need <= *cap_io)
        return 0;
    while (cap < need)
        cap *= 2;
    for (int k = 0; k < n; k++)
        if (grow(arrays[k].p, cap, arrays[k].row))
            return -ENOMEM;
    *cap_io = cap;
    return 0;
}

/* The arrays of the service block and of the destination block; returns how many. */
static int service_arrays(struct ipvs_handle *h, struct block_array *a)
{
    a[0] = (struct block_array){(void **)&h->svc_u32, IPVS_SVC_NCOLS * sizeof(uint32_t)};
    a[1] = (struct block_array){(void **)&h->svc_stats, IPVS_NSTATS * sizeof(uint64_t)};
    a[2] = (struct block_array){(void **)&h->svc_addr, IPVS_ADDR_LEN};
    a[3] = (struct block_array){(void **)&h->svc_sched, IPVS_NAME_LEN};
    return 4;
}

static int dest_arrays(struct ipvs_handle *h, struct block_array *a)
{
    a[0] = (struct block_array){(void **)&h->dst_u32, IPVS_DST_NCOLS * sizeof(uint32_t)};
    a[1] = (struct block_array){(void **)&h->dst_stats, IPVS_NSTATS * sizeof(uint64_t)};
    a[2] = (struct block_array){(void **)&h->dst_addr, IPVS_ADDR_LEN};
    return 3;
}

static int reserve_svc(struct ipvs_handle *h, uint32_t need)
{
    struct block_array a[4];
    int n = service_arrays(h, a);
    return reserve_rows(&((struct priv *)h->priv)->cap_svc, 64, need, a, n);
}

static int reserve_dst(struct ipvs_handle *h, uint32_t need)
{
    struct block_array a[4];
    int n = dest_arrays(h, a);
    return reserve_rows(&((struct priv *)h->priv)->cap_dst, 256, need, a, n);
}

/* Row r of every array of a block moves down to row w (w <= r), when rows are dropped. */
static void move_row(const struct block_array *a, int n, uint32_t w, uint32_t r)
{
    if (r == w)
        return;
    for (int k = 0; k < n; k++)
        memcpy((char *)*a[k].p + (size_t)w * a[k].row, (char *)*a[k].p + (size_t)r * a[k].row,
               a[k].row);
}

static void move_service_row(struct ipvs_handle *h, uint32_t w, uint32_t r)
{
    struct block_array a[4];
    move_row(a, service_arrays(h, a), w, r);
}

static void move_dest_row(struct ipvs_handle *h, uint32_t w, uint32_t r)
{
    struct block_array a[4];
    move_row(a, dest_arrays(h, a), w, r);
}

/* ---- attribute parsing -------------------------------------------------- */

static struct nla_policy cmd_policy[IPVS_CMD_ATTR_MAX + 1] = {
    [IPVS_CMD_ATTR_SERVICE] = {.type = NLA_NESTED},
    [IPVS_CMD_ATTR_DEST] = {.type = NLA_NESTED},
    [IPVS_CMD_ATTR_DAEMON] = {.type = NLA_NESTED},
    [IPVS_CMD_ATTR_TIMEOUT_TCP] = {.type = NLA_U32},
    [IPVS_CMD_ATTR_TIMEOUT_TCP_FIN] = {.type = NLA_U32},
    [IPVS_CMD_ATTR_TIMEOUT_UDP] = {.type = NLA_U32},
};

static struct nla_policy daemon_policy[IPVS_DAEMON_ATTR_MAX + 1] = {
    [IPVS_DAEMON_ATTR_STATE] = {.type = NLA_U32},
    [IPVS_DAEMON_ATTR_MCAST_IFN] = {.type = NLA_STRING},
    [IPVS_DAEMON_ATTR_SYNC_ID] = {.type = NLA_U32},
};

static struct nla_policy svc_policy[IPVS_SVC_ATTR_MAX + 1] = {
    [IPVS_SVC_ATTR_AF] = {.type = NLA_U16},
    [IPVS_SVC_ATTR_PROTOCOL] = {.type = NLA_U16},
    [IPVS_SVC_ATTR_ADDR] = {.type = NLA_UNSPEC, .minlen = 4},
    [IPVS_SVC_ATTR_PORT] = {.type = NLA_U16},
    [IPVS_SVC_ATTR_FWMARK] = {.type = NLA_U32},
    [IPVS_SVC_ATTR_SCHED_NAME] = {.type = NLA_STRING},
    [IPVS_SVC_ATTR_FLAGS] = {.type = NLA_UNSPEC, .minlen = sizeof(struct ip_vs_flags)},
    [IPVS_SVC_ATTR_TIMEOUT] = {.type = NLA_U32},
    [IPVS_SVC_ATTR_NETMASK] = {.type = NLA_U32},
    [IPVS_SVC_ATTR_STATS] = {.type = NLA_NESTED},
    [IPVS_SVC_ATTR_PE_NAME] = {.type = NLA_STRING},
    [IPVS_SVC_ATTR_STATS64] = {.type = NLA_NESTED},
};

static struct nla_policy dst_policy[IPVS_DEST_ATTR_MAX + 1] = {
    [IPVS_DEST_ATTR_ADDR] = {.type = NLA_UNSPEC, .minlen = 4},
    [IPVS_DEST_ATTR_PORT] = {.type = NLA_U16},
    [IPVS_DEST_ATTR_FWD_METHOD] = {.type = NLA_U32},
    [IPVS_DEST_ATTR_WEIGHT] = {.type = NLA_U32},
    [IPVS_DEST_ATTR_U_THRESH] = {.type = NLA_U32},
    [IPVS_DEST_ATTR_L_THRESH] = {.type = NLA_U32},
    [IPVS_DEST_ATTR_ACTIVE_CONNS] = {.type = NLA_U32},
    [IPVS_DEST_ATTR_INACT_CONNS] = {.type = NLA_U32},
    [IPVS_DEST_ATTR_PERSIST_CONNS] = {.type = NLA_U32},
    [IPVS_DEST_ATTR_STATS] = {.type = NLA_NESTED},
    [IPVS_DEST_ATTR_ADDR_FAMILY] = {.type = NLA_U16},
    [IPVS_DEST_ATTR_STATS64] = {.type = NLA_NESTED},
};

static struct nla_policy info_policy[IPVS_INFO_ATTR_MAX + 1] = {
    [IPVS_INFO_ATTR_VERSION] = {.type = NLA_U32},
    [IPVS_INFO_ATTR_CONN_TAB_SIZE] = {.type = NLA_U32},
};

/* Read a stats block: 32-bit blocks mix u32 and u64 attributes, 64-bit blocks are
 * all u64; the width is taken from each attribute's length, anything else is
 * ignored. Returns 1 when the block was present. */
static int read_stats(struct nlattr *block, uint64_t *out)
{
    struct nlattr *a;
    int rem;
    if (!block)
        return 0;
    memset(out, 0, IPVS_NSTATS * sizeof(uint64_t));
    nla_for_each_nested(a, block, rem)
    {
        int t = nla_type(a);
        if (t < 1 || t > IPVS_NSTATS)
            continue;
        if (nla_len(a) == 8)
            out[t - 1] = nla_get_u64(a);
        else if (nla_len(a) == 4)
            out[t - 1] = nla_get_u32(a);
    }
    return 1;
}

static void read_addr(struct nlattr *a, uint8_t *out)
{
    memset(out, 0, IPVS_ADDR_LEN);
    if (a) {
        int n = nla_len(a);
        memcpy(out, nla_data(a), n > IPVS_ADDR_LEN ? IPVS_ADDR_LEN : n);
    }
}

/* A row's counters: the 64-bit block when the kernel sent one (returns 1), else the
 * 32-bit block, else zeros (returns 0). */
static int read_row_stats(struct nlattr *stats64, struct nlattr *stats32, uint64_t *out)
{
    if (read_stats(stats64, out))
        return 1;
    if (!read_stats(stats32, out))
        memset(out, 0, IPVS_NSTATS * sizeof(uint64_t));
    return 0;
}

/* A NUL-terminated name into a fixed slot of `size` bytes, cut to fit. */
static void read_name_into(struct nlattr *a, char *out, int size)
{
    memset(out, 0, size);
    if (a) {
        int n = nla_len(a);
        memcpy(out, nla_data(a), n >= size ? size - 1 : n);
    }
}

static uint32_t u32_or0(struct nlattr *a)
{
    return a ? nla_get_u32(a) : 0;
}
static uint32_t u16_or0(struct nlattr *a)
{
    return a ? nla_get_u16(a) : 0;
}

static int parse_service(struct ipvs_handle *h, struct nlattr *nest)
{
    struct nlattr *s[IPVS_SVC_ATTR_MAX + 1];
    uint32_t i = h->n_svc, *row;
    int err = nla_parse_nested(s, IPVS_SVC_ATTR_MAX, nest, svc_policy);
    if (err < 0)
        return nle_to_errno(err);
    if (!s[IPVS_SVC_ATTR_AF])
        return -EPROTO;
    if ((err = reserve_svc(h, i + 1)))
        return err;
    row = h->svc_u32 + (size_t)i * IPVS_SVC_NCOLS;
    memset(row, 0, IPVS_SVC_NCOLS * sizeof(uint32_t));
    row[IPVS_SVC_AF] = nla_get_u16(s[IPVS_SVC_ATTR_AF]);
    row[IPVS_SVC_PROTOCOL] = u16_or0(s[IPVS_SVC_ATTR_PROTOCOL]);
    row[IPVS_SVC_PORT] = ntohs((uint16_t)u16_or0(s[IPVS_SVC_ATTR_PORT]));
    row[IPVS_SVC_FWMARK] = u32_or0(s[IPVS_SVC_ATTR_FWMARK]);
    if (s[IPVS_SVC_ATTR_FLAGS]) {
        struct ip_vs_flags f;
        memcpy(&f, nla_data(s[IPVS_SVC_ATTR_FLAGS]), sizeof(f));
        row[IPVS_SVC_FLAGS] = f.flags;
    }
    row[IPVS_SVC_TIMEOUT] = u32_or0(s[IPVS_SVC_ATTR_TIMEOUT]);
    row[IPVS_SVC_NETMASK] = u32_or0(s[IPVS_SVC_ATTR_NETMASK]);
    row[IPVS_SVC_DEST_FIRST] = h->n_dst;
    read_addr(s[IPVS_SVC_ATTR_ADDR], h->svc_addr + (size_t)i * IPVS_ADDR_LEN);
    read_name_into(s[IPVS_SVC_ATTR_SCHED_NAME], h->svc_sched + (size_t)i * IPVS_NAME_LEN,
                   IPVS_NAME_LEN);
    if (read_row_stats(s[IPVS_SVC_ATTR_STATS64], s[IPVS_SVC_ATTR_STATS],
                       h->svc_stats + (size_t)i * IPVS_NSTATS))
        h->stats64 = 1;
    h->n_svc = i + 1;
    return 0;
}

static int parse_dest(struct ipvs_handle *h, struct nlattr *nest, uint32_t svc, uint16_t svc_af)
{
    struct nlattr *d[IPVS_DEST_ATTR_MAX + 1];
    uint32_t i = h->n_dst, *row;
    int err = nla_parse_nested(d, IPVS_DEST_ATTR_MAX, nest, dst_policy);
    if (err < 0)
        return nle_to_errno(err);
    if ((err = reserve_dst(h, i + 1)))
        return err;
    row = h->dst_u32 + (size_t)i * IPVS_DST_NCOLS;
    row[IPVS_DST_SVC] = svc;
    /* Kernels before 4.x omit the family: a destination then has the service's. */
    row[IPVS_DST_AF] =
        d[IPVS_DEST_ATTR_ADDR_FAMILY] ? nla_get_u16(d[IPVS_DEST_ATTR_ADDR_FAMILY]) : svc_af;
    row[IPVS_DST_PORT] = ntohs((uint16_t)u16_or0(d[IPVS_DEST_ATTR_PORT]));
    row[IPVS_DST_FWD] = u32_or0(d[IPVS_DEST_ATTR_FWD_METHOD]) & IP_VS_CONN_F_FWD_MASK;
    row[IPVS_DST_WEIGHT] = u32_or0(d[IPVS_DEST_ATTR_WEIGHT]);
    row[IPVS_DST_U_THRESH] = u32_or0(d[IPVS_DEST_ATTR_U_THRESH]);
    row[IPVS_DST_L_THRESH] = u32_or0(d[IPVS_DEST_ATTR_L_THRESH]);
    row[IPVS_DST_ACTIVE] = u32_or0(d[IPVS_DEST_ATTR_ACTIVE_CONNS]);
    row[IPVS_DST_INACTIVE] = u32_or0(d[IPVS_DEST_ATTR_INACT_CONNS]);
    row[IPVS_DST_PERSIST] = u32_or0(d[IPVS_DEST_ATTR_PERSIST_CONNS]);
    read_addr(d[IPVS_DEST_ATTR_ADDR], h->dst_addr + (size_t)i * IPVS_ADDR_LEN);
    read_row_stats(d[IPVS_DEST_ATTR_STATS64], d[IPVS_DEST_ATTR_STATS],
                   h->dst_stats + (size_t)i * IPVS_NSTATS);
    h->n_dst = i + 1;
    if (svc < h->n_svc)
        h->svc_u32[(size_t)svc * IPVS_SVC_NCOLS + IPVS_SVC_DEST_COUNT]++;
    return 0;
}

/* The address family of service row `svc` (0 when there is no such row). */
static uint16_t service_af(const struct ipvs_handle *h, uint32_t svc)
{
    return svc < h->n_svc ? (uint16_t)h->svc_u32[(size_t)svc * IPVS_SVC_NCOLS + IPVS_SVC_AF] : 0;
}

/* A GET_CONFIG reply: the three timeouts (an attribute left out reads 0). */
static int parse_config(struct ipvs_handle *h, struct nlattr **attrs)
{
    h->settings.timeout_tcp = u32_or0(attrs[IPVS_CMD_ATTR_TIMEOUT_TCP]);
    h->settings.timeout_tcp_fin = u32_or0(attrs[IPVS_CMD_ATTR_TIMEOUT_TCP_FIN]);
    h->settings.timeout_udp = u32_or0(attrs[IPVS_CMD_ATTR_TIMEOUT_UDP]);
    return 0;
}

/* One message of a GET_DAEMON reply: a running daemon. */
static int parse_daemon(struct ipvs_handle *h, struct nlattr *nest)
{
    struct nlattr *d[IPVS_DAEMON_ATTR_MAX + 1];
    struct ipvs_daemon *out;
    int err;
    if (!nest)
        return -EPROTO;
    if ((err = nla_parse_nested(d, IPVS_DAEMON_ATTR_MAX, nest, daemon_policy)) < 0)
        return nle_to_errno(err);
    if (!d[IPVS_DAEMON_ATTR_STATE])
        return -EPROTO;
    if (h->settings.n_daemons >= IPVS_MAX_DAEMONS)
        return -E2BIG;
    out = &h->settings.daemons[h->settings.n_daemons++];
    out->state = nla_get_u32(d[IPVS_DAEMON_ATTR_STATE]);
    out->sync_id = u32_or0(d[IPVS_DAEMON_ATTR_SYNC_ID]);
    read_name_into(d[IPVS_DAEMON_ATTR_MCAST_IFN], out->mcast_ifn, IPVS_IFNAME_LEN);
    return 0;
}

/* One genetlink message of a GET_SERVICE, GET_DEST, GET_CONFIG or GET_DAEMON reply. */
static int parse_nlmsg(struct ipvs_handle *h, enum ipvs_msg_kind kind, struct nlmsghdr *nlh)
{
    struct nlattr *attrs[IPVS_CMD_ATTR_MAX + 1];
    struct priv *pv = h->priv;
    int err = genlmsg_parse(nlh, 0, attrs, IPVS_CMD_ATTR_MAX, cmd_policy);
    if (err < 0)
        return nle_to_errno(err);
    if (kind == IPVS_MSG_CONFIG)
        return parse_config(h, attrs);
    if (kind == IPVS_MSG_DAEMON)
        return parse_daemon(h, attrs[IPVS_CMD_ATTR_DAEMON]);
    if (kind == IPVS_MSG_SERVICE) {
        if (!attrs[IPVS_CMD_ATTR_SERVICE])
            return -EPROTO;
        return parse_service(h, attrs[IPVS_CMD_ATTR_SERVICE]);
    }
    if (!attrs[IPVS_CMD_ATTR_DEST])
        return -EPROTO;
    return parse_dest(h, attrs[IPVS_CMD_ATTR_DEST], pv->cur_svc, service_af(h, pv->cur_svc));
}

/* ---- callbacks ---------------------------------------------------------- */

/* A parse failure is remembered and the rest of the dump is still consumed (NL_SKIP),
 * so that no stale reply is left in the socket for the next request. */
static int on_valid_row(struct ipvs_handle *h, enum ipvs_msg_kind kind, struct nl_msg *msg)
{
    struct priv *pv = h->priv;
    int err = parse_nlmsg(h, kind, nlmsg_hdr(msg));
    if (err && !pv->cb_err)
        pv->cb_err = err;
    return NL_SKIP;
}

static int on_valid_svc(struct nl_msg *msg, void *arg)
{
    return on_valid_row(arg, IPVS_MSG_SERVICE, msg);
}

static int on_valid_dst(struct nl_msg *msg, void *arg)
{
    return on_valid_row(arg, IPVS_MSG_DEST, msg);
}

static int on_valid_config(struct nl_msg *msg, void *arg)
{
    return on_valid_row(arg, IPVS_MSG_CONFIG, msg);
}

static int on_valid_daemon(struct nl_msg *msg, void *arg)
{
    return on_valid_row(arg, IPVS_MSG_DAEMON, msg);
}

static int on_valid_info(struct nl_msg *msg, void *arg)
{
    struct ipvs_handle *h = arg;
    struct priv *pv = h->priv;
    struct nlattr *a[IPVS_INFO_ATTR_MAX + 1];
    int err = genlmsg_parse(nlmsg_hdr(msg), 0, a, IPVS_INFO_ATTR_MAX, info_policy);
    if (err < 0) {
        if (!pv->cb_err)
            pv->cb_err = nle_to_errno(err);
        return NL_SKIP;
    }
    pv->info_version = u32_or0(a[IPVS_INFO_ATTR_VERSION]);
    pv->info_tab_size = u32_or0(a[IPVS_INFO_ATTR_CONN_TAB_SIZE]);
    return NL_SKIP;
}

/* The kernel's own errno from an NLMSG_ERROR reply, kept exactly. */
static int on_error(struct sockaddr_nl *who, struct nlmsgerr *e, void *arg)
{
    struct ipvs_handle *h = arg;
    struct priv *pv = h->priv;
    (void)who;
    if (!pv->cb_err)
        pv->cb_err = e->error < 0 ? e->error : -e->error;
    return NL_STOP;
}

/* ---- requests ----------------------------------------------------------- */

/* Send one request and read replies until the kernel is done. */
static int transact(struct ipvs_handle *h, struct nl_msg *msg, nl_recvmsg_msg_cb_t valid)
{
    struct priv *pv = h->priv;
    int err;
    pv->cb_err = 0;
    nl_socket_modify_cb(pv->sk, NL_CB_VALID, NL_CB_CUSTOM, valid, h);
    nl_socket_modify_err_cb(pv->sk, NL_CB_CUSTOM, on_error, h);
    err = nl_send_auto(pv->sk, msg);
    nlmsg_free(msg);
    if (err < 0)
        return nle_to_errno(err);
    err = nl_recvmsgs_default(pv->sk);
    if (pv->cb_err)
        return pv->cb_err;
    return err < 0 ? nle_to_errno(err) : 0;
}

static struct nl_msg *new_request(struct ipvs_handle *h, int cmd, int flags)
{
    struct priv *pv = h->priv;
    struct nl_msg *msg = nlmsg_alloc();
    if (!msg)
        return NULL;
    if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, pv->family, 0, flags, cmd,
                     IPVS_GENL_VERSION)) {
        nlmsg_free(msg);
        return NULL;
    }
    return msg;
}

/* GET_DEST for service row `svc`: the service is named by fwmark, or by
 * protocol + address + port, as the kernel looks it up. */
static int dump_dests(struct ipvs_handle *h, uint32_t svc)
{
    struct priv *pv = h->priv;
    const uint32_t *row = h->svc_u32 + (size_t)svc * IPVS_SVC_NCOLS;
    struct nl_msg *msg = new_request(h, IPVS_CMD_GET_DEST, NLM_F_DUMP);
    struct nlattr *nest;
    uint16_t af = (uint16_t)row[IPVS_SVC_AF];
    if (!msg)
        return -ENOMEM;
    nest = nla_nest_start(msg, IPVS_CMD_ATTR_SERVICE);
    if (!nest || nla_put_u16(msg, IPVS_SVC_ATTR_AF, af) < 0)
        goto nomem;
    if (row[IPVS_SVC_FWMARK]) {
        if (nla_put_u32(msg, IPVS_SVC_ATTR_FWMARK, row[IPVS_SVC_FWMARK]) < 0)
            goto nomem;
    } else {
        int alen = af == AF_INET6 ? 16 : 4;
        if (nla_put_u16(msg, IPVS_SVC_ATTR_PROTOCOL, (uint16_t)row[IPVS_SVC_PROTOCOL]) < 0 ||
            nla_put(msg, IPVS_SVC_ATTR_ADDR, alen, h->svc_addr + (size_t)svc * IPVS_ADDR_LEN) < 0 ||
            nla_put_u16(msg, IPVS_SVC_ATTR_PORT, htons((uint16_t)row[IPVS_SVC_PORT])) < 0)
            goto nomem;
    }
    nla_nest_end(msg, nest);
    pv->cur_svc = svc;
    return transact(h, msg, on_valid_dst);
nomem:
    nlmsg_free(msg);
    return -ENOMEM;
}

/* ---- duplicate rows ------------------------------------------------------ */

/* The kernel resumes a dump by position in a list that may have changed in between: a
 * service deleted between two batches makes the next batch repeat one, and a destination
 * added (at the head of its service's list) between two batches of GET_DEST repeats one.
 * Each pass keeps the first row of each service or destination, compacting rows in place. */

typedef int (*same_row_fn)(const struct ipvs_handle *h, uint32_t a, uint32_t b);

/* An empty open-addressing table for `n` rows (slots hold a kept row + 1; 0 = empty). */
static uint32_t *empty_slots(struct ipvs_handle *h, uint32_t n, uint32_t *mask)
{
    struct priv *pv = h->priv;
    uint32_t size = 16;
    while (size < 2 * n)
        size *= 2;
    if (size > pv->cap_slots) {
        if (grow((void **)&pv->slots, size, sizeof(uint32_t)))
            return NULL;
        pv->cap_slots = size;
    }
    memset(pv->slots, 0, (size_t)size * sizeof(uint32_t));
    *mask = size - 1;
    return pv->slots;
}

/* 1 when row r repeats a row kept before; otherwise r is remembered as kept at row w
 * (rows before w are final, so a later row is compared with the kept copy). */
static int kept_before(const struct ipvs_handle *h, uint32_t *slot, uint32_t mask, uint32_t hash,
                       uint32_t r, uint32_t w, same_row_fn same)
{
    uint32_t i = hash & mask;
    while (slot[i] && !same(h, slot[i] - 1, r))
        i = (i + 1) & mask;
    if (slot[i])
        return 1;
    slot[i] = w + 1;
    return 0;
}

static uint32_t fnv1a(uint32_t v, const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        v = (v ^ ((const uint8_t *)p)[i]) * 16777619u;
    return v;
}

/* The service a row names, as GET_DEST looks it up: af + fwmark, or af + protocol +
 * address + port. */
static int same_service(const struct ipvs_handle *h, uint32_t a, uint32_t b)
{
    const uint32_t *x = h->svc_u32 + (size_t)a * IPVS_SVC_NCOLS;
    const uint32_t *y = h->svc_u32 + (size_t)b * IPVS_SVC_NCOLS;
    if (x[IPVS_SVC_AF] != y[IPVS_SVC_AF] || x[IPVS_SVC_FWMARK] != y[IPVS_SVC_FWMARK])
        return 0;
    if (x[IPVS_SVC_FWMARK])
        return 1;
    return x[IPVS_SVC_PROTOCOL] == y[IPVS_SVC_PROTOCOL] && x[IPVS_SVC_PORT] == y[IPVS_SVC_PORT] &&
           memcmp(h->svc_addr + (size_t)a * IPVS_ADDR_LEN, h->svc_addr + (size_t)b * IPVS_ADDR_LEN,
                  IPVS_ADDR_LEN) == 0;
}

static uint32_t service_hash(const struct ipvs_handle *h, uint32_t r)
{
    const uint32_t *x = h->svc_u32 + (size_t)r * IPVS_SVC_NCOLS;
    uint32_t key[4] = {x[IPVS_SVC_AF], x[IPVS_SVC_FWMARK], 0, 0};
    if (x[IPVS_SVC_FWMARK])
        return fnv1a(2166136261u, key, sizeof(key));
    key[2] = x[IPVS_SVC_PROTOCOL];
    key[3] = x[IPVS_SVC_PORT];
    return fnv1a(fnv1a(2166136261u, key, sizeof(key)), h->svc_addr + (size_t)r * IPVS_ADDR_LEN,
                 IPVS_ADDR_LEN);
}

/* A real server of a service, as the kernel keys it: af + address + port. */
static int same_dest(const struct ipvs_handle *h, uint32_t a, uint32_t b)
{
    const uint32_t *x = h->dst_u32 + (size_t)a * IPVS_DST_NCOLS;
    const uint32_t *y = h->dst_u32 + (size_t)b * IPVS_DST_NCOLS;
    return x[IPVS_DST_AF] == y[IPVS_DST_AF] && x[IPVS_DST_PORT] == y[IPVS_DST_PORT] &&
           memcmp(h->dst_addr + (size_t)a * IPVS_ADDR_LEN, h->dst_addr + (size_t)b * IPVS_ADDR_LEN,
                  IPVS_ADDR_LEN) == 0;
}

static uint32_t dest_hash(const struct ipvs_handle *h, uint32_t r)
{
    const uint32_t *x = h->dst_u32 + (size_t)r * IPVS_DST_NCOLS;
    uint32_t key[2] = {x[IPVS_DST_AF], x[IPVS_DST_PORT]};
    return fnv1a(fnv1a(2166136261u, key, sizeof(key)), h->dst_addr + (size_t)r * IPVS_ADDR_LEN,
                 IPVS_ADDR_LEN);
}

/* Repeated service rows go, with their destination rows. */
static int drop_duplicate_services(struct ipvs_handle *h)
{
    uint32_t n = h->n_svc, r, w, d, dw = 0, mask, *slot;
    if (n < 2)
        return 0;
    if (!(slot = empty_slots(h, n, &mask)))
        return -ENOMEM;
    for (r = 0, w = 0; r < n; r++) {
        const uint32_t *row = h->svc_u32 + (size_t)r * IPVS_SVC_NCOLS;
        uint32_t first = row[IPVS_SVC_DEST_FIRST], count = row[IPVS_SVC_DEST_COUNT];
        if (kept_before(h, slot, mask, service_hash(h, r), r, w, same_service))
            continue;
        move_service_row(h, w, r);
        /* destinations are in service order: move this service's down to dw */
        for (d = 0; d < count && first + d < h->n_dst; d++) {
            move_dest_row(h, dw + d, first + d);
            h->dst_u32[(size_t)(dw + d) * IPVS_DST_NCOLS + IPVS_DST_SVC] = w;
        }
        h->svc_u32[(size_t)w * IPVS_SVC_NCOLS + IPVS_SVC_DEST_FIRST] = dw;
        h->svc_u32[(size_t)w * IPVS_SVC_NCOLS + IPVS_SVC_DEST_COUNT] = d;
        dw += d;
        w++;
    }
    h->n_svc = w;
    h->n_dst = dw;
    return 0;
}

/* Repeated destination rows of each service go (rows of other services may repeat one:
 * a real server of several services). */
static int drop_duplicate_dests(struct ipvs_handle *h)
{
    uint32_t s, r, dw = 0, mask, *slot;
    for (s = 0; s < h->n_svc; s++) {
        uint32_t *row = h->svc_u32 + (size_t)s * IPVS_SVC_NCOLS;
        uint32_t first = row[IPVS_SVC_DEST_FIRST], end = first + row[IPVS_SVC_DEST_COUNT];
        if (end > h->n_dst)
            end = h->n_dst;
        if (first > end) /* never from the shim's own rows; kept safe for any input */
            first = end;
        row[IPVS_SVC_DEST_FIRST] = dw;
        if (end - first < 2) { /* nothing to compare: most services of a big node */
            for (r = first; r < end; r++)
                move_dest_row(h, dw++, r);
        } else {
            if (!(slot = empty_slots(h, end - first, &mask)))
                return -ENOMEM;
            for (r = first; r < end; r++)
                if (!kept_before(h, slot, mask, dest_hash(h, r), r, dw, same_dest))
                    move_dest_row(h, dw++, r);
        }
        row[IPVS_SVC_DEST_COUNT] = dw - row[IPVS_SVC_DEST_FIRST];
    }
    h->n_dst = dw;
    return 0;
}

int ipvs_drop_duplicates(struct ipvs_handle *h)
{
    int err = drop_duplicate_services(h);
    return err ? err : drop_duplicate_dests(h);
}

/* The destinations of every service row of h. A service deleted since the service dump is
 * dropped (rows are compacted in place; dests already read keep their row index). */
static int dump_all_dests(struct ipvs_handle *h)
{
    uint32_t r, w, n = h->n_svc;
    int err;
    h->n_dst = 0;
    for (r = 0, w = 0; r < n; r++) {
        uint32_t first = h->n_dst;
        move_service_row(h, w, r);
        h->svc_u32[(size_t)w * IPVS_SVC_NCOLS + IPVS_SVC_DEST_FIRST] = first;
        h->svc_u32[(size_t)w * IPVS_SVC_NCOLS + IPVS_SVC_DEST_COUNT] = 0;
        err = dump_dests(h, w);
        if (err == -ESRCH || err == -ENOENT) {
            h->n_dst = first; /* the service went away: forget it */
            continue;
        }
        if (err)
            return err;
        w++;
    }
    h->n_svc = w;
    return 0;
}

/* Rows [from, from + n) of one block's arrays appended to another's at row `at`. */
static void copy_rows(const struct block_array *to, const struct block_array *from, int arrays,
                      uint32_t at, uint32_t first, uint32_t n)
{
    for (int k = 0; k < arrays; k++)
        memcpy((char *)*to[k].p + (size_t)at * to[k].row,
               (char *)*from[k].p + (size_t)first * from[k].row, (size_t)n * from[k].row);
}

/* The helper's services and destinations appended to h's, their cross-references shifted:
 * the same rows, in the same order, as one thread reading every service would have left. */
static int append_rows(struct ipvs_handle *h, const struct ipvs_handle *h2)
{
    struct block_array to[4], from[4];
    uint32_t s0 = h->n_svc, d0 = h->n_dst;
    int n, err;
    if ((err = reserve_svc(h, s0 + h2->n_svc)) || (err = reserve_dst(h, d0 + h2->n_dst)))
        return err;
    n = service_arrays(h, to);
    service_arrays((struct ipvs_handle *)h2, from);
    copy_rows(to, from, n, s0, 0, h2->n_svc);
    n = dest_arrays(h, to);
    dest_arrays((struct ipvs_handle *)h2, from);
    copy_rows(to, from, n, d0, 0, h2->n_dst);
    for (uint32_t i = s0; i < s0 + h2->n_svc; i++)
        h->svc_u32[(size_t)i * IPVS_SVC_NCOLS + IPVS_SVC_DEST_FIRST] += d0;
    for (uint32_t i = d0; i < d0 + h2->n_dst; i++)
        h->dst_u32[(size_t)i * IPVS_DST_NCOLS + IPVS_DST_SVC] += s0;
    h->n_svc = s0 + h2->n_svc;
    h->n_dst = d0 + h2->n_dst;
    return 0;
}

typedef int (*in_namespace_fn)(struct ipvs_handle *h, void *arg);
static int in_namespace(struct ipvs_handle *h, in_namespace_fn fn, void *arg);
static int handle_alloc(struct ipvs_handle **out);
static int connect_here(struct priv *pv);

static int make_helper(struct ipvs_handle *h, void *arg)
{
    struct ipvs_handle **h2 = arg;
    int err;
    (void)h; /* the namespace is what it needs of h: the thread is in it */
    err = handle_alloc(h2);
    return err ? err : connect_here((*h2)->priv);
}

/* The helper and its socket, made in the handle's namespace the first time a dump is large
 * enough: a handle on a small namespace keeps one descriptor. Errors: in_namespace's. */
static int connect_helper(struct ipvs_handle *h)
{
    struct ipvs_handle *h2 = NULL;
    int err = in_namespace(h, make_helper, &h2);
    if (err) {
        ipvs_close(h2);
        return err;
    }
    ((struct priv *)h->priv)->helper = h2;
    return 0;
}

/* The helper's arrays freed after each split dump: kept, they would hold half of the
 * largest dump's rows a second time for the process's life. */
static void release_rows(struct ipvs_handle *h)
{
    struct block_array a[4];
    struct priv *pv = h->priv;
    int n = service_arrays(h, a);
    for (int k = 0; k < n; k++) {
        free(*a[k].p);
        *a[k].p = NULL;
    }
    n = dest_arrays(h, a);
    for (int k = 0; k < n; k++) {
        free(*a[k].p);
        *a[k].p = NULL;
    }
    pv->cap_svc = pv->cap_dst = 0;
    h->n_svc = h->n_dst = 0;
}

struct dest_job {
    struct ipvs_handle *h;
    int err;
};

static void *dest_job_run(void *arg)
{
    struct dest_job *job = arg;
    job->err = dump_all_dests(job->h);
    return NULL;
}

/* The destinations of h's services, the second half read by the helper in its own thread
 * (every signal blocked there: they are the calling thread's to handle). If the thread
 * cannot start, this thread reads both halves. */
static int dump_all_dests_split(struct ipvs_handle *h, struct ipvs_handle *h2)
{
    struct block_array to[4], from[4];
    struct dest_job job = {h2, 0};
    uint32_t half = h->n_svc / 2, rest = h->n_svc - half;
    sigset_t all, old;
    pthread_t t;
    int n, err, started;
    if ((err = reserve_svc(h2, rest))) {
        release_rows(h2);
        return err;
    }
    n = service_arrays(h2, to);
    service_arrays(h, from);
    copy_rows(to, from, n, 0, half, rest);
    h2->n_svc = rest;
    h->n_svc = half;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    started = pthread_create(&t, NULL, dest_job_run, &job) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    err = dump_all_dests(h);
    if (started)
        pthread_join(t, NULL);
    else
        dest_job_run(&job);
    if (!err)
        err = job.err;
    if (!err)
        err = append_rows(h, h2);
    release_rows(h2);
    return err;
}

int ipvs_dump(struct ipvs_handle *h)
{
    struct nl_msg *msg;
    struct priv *pv;
    int err;
    if (!h || !h->priv || !((struct priv *)h->priv)->sk)
        return -EBADF;
    pv = h->priv;
    h->n_svc = 0;
    h->n_dst = 0;
    h->stats64 = 0;
    msg = new_request(h, IPVS_CMD_GET_SERVICE, NLM_F_DUMP);
    if (!msg)
        return -ENOMEM;
    if ((err = transact(h, msg, on_valid_svc)))
        return err;
    if ((err = drop_duplicate_services(h))) /* before asking for their destinations */
        return err;
    if (h->n_svc >= SPLIT_MIN_SERVICES && !pv->helper &&
        (err = connect_helper(h)) == -ENOTRECOVERABLE)
        return err; /* any other failure: this dump reads on one socket */
    if (pv->helper && h->n_svc >= SPLIT_MIN_SERVICES)
        err = dump_all_dests_split(h, pv->helper);
    else
        err = dump_all_dests(h);
    return err ? err : drop_duplicate_dests(h);
}

int ipvs_get_info(struct ipvs_handle *h, uint32_t *version, uint32_t *conn_tab_size)
{
    struct priv *pv;
    struct nl_msg *msg;
    int err;
    if (!h || !h->priv || !((struct priv *)h->priv)->sk)
        return -EBADF;
    pv = h->priv;
    msg = new_request(h, IPVS_CMD_GET_INFO, 0);
    if (!msg)
        return -ENOMEM;
    pv->info_version = pv->info_tab_size = 0;
    if ((err = transact(h, msg, on_valid_info)))
        return err;
    *version = pv->info_version;
    *conn_tab_size = pv->info_tab_size;
    return 0;
}

/* One request of ipvs_get_settings: what the kernel refused or a reply failed to parse goes
 * to *part_err (the reply stream was read to its end); a failure of the socket itself is
 * returned. */
static int settings_request(struct ipvs_handle *h, int cmd, int flags, nl_recvmsg_msg_cb_t valid,
                            int *part_err)
{
    struct priv *pv = h->priv;
    struct nl_msg *msg = new_request(h, cmd, flags);
    int err;
    if (!msg)
        return -ENOMEM;
    err = transact(h, msg, valid);
    *part_err = pv->cb_err;
    return pv->cb_err ? 0 : err;
}

/* Whole file: one decimal integer and a newline, as the kernel writes an int sysctl. Read
 * from the namespace the calling thread is in: /proc/sys/net resolves it at open(). */
static int read_sysctl(const char *name, int64_t *out)
{
    char path[96], buf[32], *end;
    int fd;
    ssize_t n;
    long long v;
    snprintf(path, sizeof(path), "%s/%s", SYSCTL_DIR, name);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -errno; /* -ENOENT: this kernel or namespace has no such setting */
    n = read(fd, buf, sizeof(buf) - 1);
    if (n < 0)
        n = -errno;
    close(fd);
    if (n < 0)
        return (int)n;
    buf[n] = '\0';
    errno = 0;
    v = strtoll(buf, &end, 10);
    if (end == buf || errno || (*end && strcmp(end, "\n") != 0))
        return -EINVAL;
    *out = v;
    return 0;
}

/* ---- namespaces --------------------------------------------------------- */

/* Open the file at `path` as a network namespace to enter: *fd and its fstat in *st, or a
 * negative errno. Never blocks: a FIFO would wait in open() for a writer, a device could be a
 * terminal, so open without blocking, then accept only a regular file (what nsfs files and
 * Docker's placeholder are). NS_GET_NSTYPE (Linux 4.11+) tells a namespace of another type
 * (mnt, pid...) from a network one before setns(); ENOTTY means no nsfs file, or an older
 * kernel, and setns() decides. An empty regular file setns() refuses is the file Docker
 * creates before it bind-mounts the namespace on it: -ENOMEDIUM, "not there yet". */
static int open_netns(const char *path, int *fd, struct stat *st)
{
    int type;
    *fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (*fd < 0)
        return errno == ENXIO ? -EINVAL : -errno; /* ENXIO: a socket or a device without driver */
    if (fstat(*fd, st) < 0)
        return -errno;
    if (!S_ISREG(st->st_mode))
        return -EINVAL;
    type = ioctl(*fd, NS_GET_NSTYPE);
    if (type >= 0 && type != CLONE_NEWNET)
        return -EINVAL;
    return 0;
}

/* Move the calling thread into the namespace `target` (open_netns's fd and fstat); *self
 * gets a descriptor of the thread's own namespace for leave_netns. */
static int enter_netns(int target, const struct stat *st, int *self)
{
    char own[64];
    /* setns(2) moves the calling thread only: remember this thread's namespace. */
    snprintf(own, sizeof(own), "/proc/self/task/%ld/ns/net", (long)syscall(SYS_gettid));
    *self = open(own, O_RDONLY | O_CLOEXEC);
    if (*self < 0)
        return -errno;
    if (setns(target, CLONE_NEWNET) < 0) {
        int err = errno == EINVAL && st->st_size == 0 ? -ENOMEDIUM : -errno;
        close(*self);
        *self = -1;
        return err;
    }
    return 0;
}

/* Back to the namespace enter_netns left (self < 0: never left). -ENOTRECOVERABLE when
 * setns fails: the thread stays in the other namespace, and every socket it made after
 * would silently belong there. */
static int leave_netns(int self)
{
    return self >= 0 && setns(self, CLONE_NEWNET) < 0 ? -ENOTRECOVERABLE : 0;
}

/* fn(h, arg) with the calling thread in the handle's namespace, entered for this call only,
 * so that a handle keeps no descriptor of it. -ESTALE: the path names another namespace now
 * (the caller reopens); -ENOTRECOVERABLE: the thread could not return; else fn's result. */
static int in_namespace(struct ipvs_handle *h, in_namespace_fn fn, void *arg)
{
    struct priv *pv = h->priv;
    struct stat st;
    int err, left, self = -1, target = -1;
    if (*pv->path) {
        if ((err = open_netns(pv->path, &target, &st)))
            goto out;
        if ((uint64_t)st.st_dev != h->ns_dev || (uint64_t)st.st_ino != h->ns_ino) {
            err = -ESTALE;
            goto out;
        }
        if ((err = enter_netns(target, &st, &self)))
            goto out;
    }
    err = fn(h, arg);
    if ((left = leave_netns(self)))
        err = left;
out:
    if (self >= 0)
        close(self);
    if (target >= 0)
        close(target);
    return err;
}

/* The sysctls, read where /proc/sys/net shows the handle's namespace (a descriptor per
 * sysctl kept open instead would cost 20 per namespace). */
static int read_sysctls_here(struct ipvs_handle *h, void *arg)
{
    (void)arg;
    for (int i = 0; i < IPVS_NSYSCTL; i++)
        h->settings.sysctl_err[i] = read_sysctl(sysctl_names[i], &h->settings.sysctl[i]);
    return 0;
}

static int read_sysctls(struct ipvs_handle *h)
{
    return in_namespace(h, read_sysctls_here, NULL);
}

int ipvs_get_settings(struct ipvs_handle *h)
{
    struct ipvs_settings *s;
    int err;
    if (!h || !h->priv || !((struct priv *)h->priv)->sk)
        return -EBADF;
    s = &h->settings;
    memset(s, 0, sizeof(*s));
    if ((err = read_sysctls(h)))
        return err;
    if ((err = settings_request(h, IPVS_CMD_GET_CONFIG, 0, on_valid_config, &s->config_err)))
        return err;
    /* the kernel answers GET_DAEMON as a dump only */
    return settings_request(h, IPVS_CMD_GET_DAEMON, NLM_F_DUMP, on_valid_daemon, &s->daemon_err);
}

const char *ipvs_sysctl_name(int i)
{
    return i >= 0 && i < IPVS_NSYSCTL ? sysctl_names[i] : "";
}

/* ---- handles ------------------------------------------------------------ */

static int handle_alloc(struct ipvs_handle **out)
{
    struct ipvs_handle *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->priv = calloc(1, sizeof(struct priv));
    if (!h->priv) {
        free(h);
        return -ENOMEM;
    }
    for (int i = 0; i < IPVS_NSYSCTL; i++) /* no sysctl until ipvs_get_settings reads them */
        h->settings.sysctl_err[i] = -ENOENT;
    *out = h;
    return 0;
}

void ipvs_close(struct ipvs_handle *h)
{
    struct priv *pv;
    if (!h)
        return;
    pv = h->priv;
    if (pv && pv->sk)
        nl_socket_free(pv->sk);
    if (pv) {
        ipvs_close(pv->helper);
        free(pv->slots);
        free(pv->path);
    }
    free(pv);
    free(h->svc_u32);
    free(h->svc_stats);
    free(h->svc_addr);
    free(h->svc_sched);
    free(h->dst_u32);
    free(h->dst_stats);
    free(h->dst_addr);
    free(h);
}

/* Create the socket and resolve the family in whatever namespace the thread is in. */
static int connect_here(struct priv *pv)
{
    int err, fd;
    struct timeval tv = {.tv_sec = RECV_TIMEOUT_S, .tv_usec = 0};
    pv->sk = nl_socket_alloc();
    if (!pv->sk)
        return -ENOMEM;
    if ((err = genl_connect(pv->sk)) < 0)
        return nle_to_errno(err);
    fd = nl_socket_get_fd(pv->sk);
    /* Each result counts: a socket without its receive timeout could block a dump, with the
     * binding's lock held, for as long as the kernel does not answer. */
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
        return -errno;
    if ((err = nl_socket_set_buffer_size(pv->sk, RCVBUF_BYTES, 0)) < 0 ||
        (err = nl_socket_set_msg_buf_size(pv->sk, MSGBUF_BYTES)) < 0)
        return nle_to_errno(err);
    nl_socket_enable_msg_peek(pv->sk);
    err = genl_ctrl_resolve(pv->sk, IPVS_GENL_NAME);
    if (err < 0)
        return err == -NLE_OBJ_NOTFOUND ? -EPROTONOSUPPORT : nle_to_errno(err);
    pv->family = err;
    /* Our requests are GETs whose replies are the answer: an extra ACK after them
     * would be left in the socket (resolve above needs acks, so disable only now). */
    nl_socket_disable_auto_ack(pv->sk);
    return 0;
}

int ipvs_open(const char *netns_path, struct ipvs_handle **out)
{
    struct ipvs_handle *h = NULL;
    struct stat st;
    int err, left, self = -1, target = -1;
    *out = NULL;
    if ((err = handle_alloc(&h)))
        return err;
    if (!(((struct priv *)h->priv)->path = strdup(netns_path ? netns_path : ""))) {
        err = -ENOMEM;
        goto fail;
    }
    if (netns_path && *netns_path) {
        if ((err = open_netns(netns_path, &target, &st)) || (err = enter_netns(target, &st, &self)))
            goto fail;
    } else if (stat("/proc/self/ns/net", &st) < 0) {
        memset(&st, 0, sizeof(st));
    }
    h->ns_dev = (uint64_t)st.st_dev;
    h->ns_ino = (uint64_t)st.st_ino;
    err = connect_here(h->priv);
    if ((left = leave_netns(self)))
        err = left;
fail:
    if (self >= 0)
        close(self);
    if (target >= 0)
        close(target);
    if (err) {
        ipvs_close(h);
        return err;
    }
    *out = h;
    return 0;
}

/* ---- offline parsing (fuzzer, tests) ------------------------------------ */

int ipvs_handle_new_offline(struct ipvs_handle **out)
{
    *out = NULL;
    return handle_alloc(out);
}

int ipvs_parse_message(struct ipvs_handle *h, enum ipvs_msg_kind kind, const void *msg, size_t len)
{
    struct nlmsghdr *nlh = (struct nlmsghdr *)msg;
    if (!h || !msg || (unsigned)kind > IPVS_MSG_DAEMON)
        return -EINVAL;
    if (len < NLMSG_HDRLEN || nlh->nlmsg_len < NLMSG_HDRLEN || nlh->nlmsg_len > len)
        return -EMSGSIZE;
    if (kind == IPVS_MSG_DEST)
        ((struct priv *)h->priv)->cur_svc = h->n_svc ? h->n_svc - 1 : 0;
    return parse_nlmsg(h, kind, nlh);
}

const char *ipvs_libnl_version(void)
{
    return LIBNL_VERSION;
}
