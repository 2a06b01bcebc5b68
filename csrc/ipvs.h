/*
 * ipvs.h - the C shim's whole interface. Fed verbatim to cffi's cdef, so it holds
 * declarations only: no #include, no #if, no macros but integer constants.
 *
 * A handle owns a generic netlink socket bound to one network namespace and a set of
 * flat arrays (row-major, one row per service or destination) that every dump refills.
 * Arrays grow geometrically and are reused: a dump of the same shape allocates nothing.
 * Every function returning int returns 0 or a negative errno; ipvs_close returns nothing,
 * ipvs_sysctl_name and ipvs_libnl_version a static string.
 */

/* Stats columns, in IPVS_STATS_ATTR_* order (attribute type minus one: ipvs.c asserts it). */
#define IPVS_ST_CONNS    0
#define IPVS_ST_INPKTS   1
#define IPVS_ST_OUTPKTS  2
#define IPVS_ST_INBYTES  3
#define IPVS_ST_OUTBYTES 4
#define IPVS_ST_CPS      5
#define IPVS_ST_INPPS    6
#define IPVS_ST_OUTPPS   7
#define IPVS_ST_INBPS    8
#define IPVS_ST_OUTBPS   9
#define IPVS_NSTATS      10

/* Service uint32 columns (svc_u32 row). The port is in host byte order. */
#define IPVS_SVC_AF         0
#define IPVS_SVC_PROTOCOL   1
#define IPVS_SVC_PORT       2
#define IPVS_SVC_FWMARK     3
#define IPVS_SVC_FLAGS      4
#define IPVS_SVC_TIMEOUT    5
#define IPVS_SVC_NETMASK    6
#define IPVS_SVC_DEST_FIRST 7
#define IPVS_SVC_DEST_COUNT 8
#define IPVS_SVC_NCOLS      9

/* Destination uint32 columns (dst_u32 row). weight is a signed int in the kernel. */
#define IPVS_DST_SVC      0
#define IPVS_DST_AF       1
#define IPVS_DST_PORT     2
#define IPVS_DST_FWD      3
#define IPVS_DST_WEIGHT   4
#define IPVS_DST_U_THRESH 5
#define IPVS_DST_L_THRESH 6
#define IPVS_DST_ACTIVE   7
#define IPVS_DST_INACTIVE 8
#define IPVS_DST_PERSIST  9
#define IPVS_DST_NCOLS    10

#define IPVS_ADDR_LEN 16 /* an IPv4 address uses the first 4 bytes */
#define IPVS_NAME_LEN 16 /* scheduler name, NUL-terminated */

/* The namespace's settings (ipvs_get_settings). A daemon is a master or a backup: at most
 * one of each. The sysctls are the integer files of /proc/sys/net/ipv4/vs that
 * ipvs_sysctl_name() names, index 0 .. IPVS_NSYSCTL - 1. */
#define IPVS_MAX_DAEMONS 2
#define IPVS_IFNAME_LEN  16 /* multicast interface name, NUL-terminated */
#define IPVS_NSYSCTL     20

struct ipvs_daemon {
    uint32_t state; /* 1 master, 2 backup (IP_VS_STATE_*) */
    uint32_t sync_id;
    char mcast_ifn[IPVS_IFNAME_LEN];
};

struct ipvs_settings {
    /* IPVS_CMD_GET_CONFIG: 0, or the negative errno the kernel answered; then the
     * timeouts in seconds (what `ipvsadm --set` changes) */
    int config_err;
    uint32_t timeout_tcp;
    uint32_t timeout_tcp_fin;
    uint32_t timeout_udp;
    /* IPVS_CMD_GET_DAEMON: 0 or the kernel's negative errno; then the running daemons */
    int daemon_err;
    uint32_t n_daemons;
    struct ipvs_daemon daemons[IPVS_MAX_DAEMONS];
    /* each sysctl's value, valid where its sysctl_err is 0; else -ENOENT (the kernel has no
     * such setting in the namespace) or the errno opening or reading it gave */
    int64_t sysctl[IPVS_NSYSCTL];
    int sysctl_err[IPVS_NSYSCTL];
};

struct ipvs_handle {
    /* filled by ipvs_dump(); valid until the next dump or close */
    uint32_t n_svc;
    uint32_t n_dst;
    uint32_t *svc_u32;   /* n_svc * IPVS_SVC_NCOLS */
    uint64_t *svc_stats; /* n_svc * IPVS_NSTATS */
    uint8_t *svc_addr;   /* n_svc * IPVS_ADDR_LEN */
    char *svc_sched;     /* n_svc * IPVS_NAME_LEN */
    uint32_t *dst_u32;   /* n_dst * IPVS_DST_NCOLS */
    uint64_t *dst_stats; /* n_dst * IPVS_NSTATS */
    uint8_t *dst_addr;   /* n_dst * IPVS_ADDR_LEN */
    /* the namespace the socket is bound to (fstat of the path at open) */
    uint64_t ns_dev;
    uint64_t ns_ino;
    /* 1 when the last dump's stats came from the 64-bit blocks */
    int stats64;
    /* filled by ipvs_get_settings(); valid until the next call or close */
    struct ipvs_settings settings;
    /* private to the shim */
    void *priv;
};

/* Open a handle on the network namespace at `netns_path` ("" = the caller's own).
 * Enters the namespace on the calling thread, connects the socket, resolves the IPVS
 * family and returns to the original namespace. Never blocks on the path: it is opened
 * non-blocking and must be a regular file (as nsfs files are). Errors: -ENOENT (no such
 * path), -EINVAL (not a network namespace: a FIFO, directory, socket or device, a file with
 * content, or a namespace of another type such as /proc/self/ns/mnt), -ENOMEDIUM (an empty
 * regular file that is no namespace: the file Docker creates before it bind-mounts the
 * namespace on it; on kernels before 4.11 also another namespace type), -EACCES (cannot open
 * the path), -EPERM (no CAP_SYS_ADMIN/CAP_NET_ADMIN),
 * -EPROTONOSUPPORT (no IPVS family in that kernel: ip_vs not loaded),
 * -ENOTRECOVERABLE (could not return to the original namespace: the thread is lost).
 * The handle keeps one descriptor, its socket (two once a dump splits), and remembers the path and
 * the namespace's identity (ns_dev/ns_ino) for ipvs_get_settings. */
int ipvs_open(const char *netns_path, struct ipvs_handle **out);
void ipvs_close(struct ipvs_handle *h);

/* Dump every service and every destination into the handle's arrays. From 512 services on,
 * the second half's destinations are read on a second socket in a second thread (made in
 * the namespace at the first such dump, kept until ipvs_close): the rows are the same.
 * -ENOTRECOVERABLE: making that socket, the thread could not return to its namespace. */
int ipvs_dump(struct ipvs_handle *h);

/* IPVS_CMD_GET_INFO: version (0x010201 = 1.2.1) and connection hash table size. */
int ipvs_get_info(struct ipvs_handle *h, uint32_t *version, uint32_t *conn_tab_size);

/* Fill h->settings: the timeouts (IPVS_CMD_GET_CONFIG), the sync daemons
 * (IPVS_CMD_GET_DAEMON) and the sysctls. /proc/sys/net shows the namespace of the thread
 * that looks a file up, so the sysctls are read with the calling thread moved into the
 * handle's namespace for this call (setns in, open/read/close each file, setns back): no
 * file stays open. One missing or unreadable is no error (see ipvs_settings.sysctl_err), nor
 * is a request the kernel refuses: its errno goes to config_err or daemon_err and the rest
 * is still read. Returns a negative errno when the socket failed (no answer, a broken reply
 * stream), when the path is gone or names another namespace than the handle's now
 * (-ESTALE), or when entering it failed: the handle should then be closed and opened again;
 * -ENOTRECOVERABLE as for ipvs_open (the thread could not return). */
int ipvs_get_settings(struct ipvs_handle *h);

/* The name of sysctl i under /proc/sys/net/ipv4/vs ("" when i is out of range). */
const char *ipvs_sysctl_name(int i);

/* Parse one raw netlink message (as the kernel sends for GET_SERVICE / GET_DEST, or for
 * GET_CONFIG / GET_DAEMON) into the handle: a service or destination appends a row (a
 * destination is attached to the last service row), a config reply sets the timeouts of
 * h->settings, a daemon reply appends a daemon (one past IPVS_MAX_DAEMONS: -E2BIG). For the
 * fuzzer and unit tests; no socket use. */
enum ipvs_msg_kind {
    IPVS_MSG_SERVICE = 0,
    IPVS_MSG_DEST = 1,
    IPVS_MSG_CONFIG = 2,
    IPVS_MSG_DAEMON = 3
};
int ipvs_parse_message(struct ipvs_handle *h, enum ipvs_msg_kind kind, const void *msg, size_t len);
int ipvs_handle_new_offline(struct ipvs_handle **out);

/* Drop service rows that repeat an earlier row's service (same af and fwmark, or same af,
 * protocol, address and port) with their destination rows, then destination rows that
 * repeat an earlier real server of the same service (same af, address and port); keeps the
 * first of each, in order. ipvs_dump() does this: the kernel resumes a dump by position, so
 * a service deleted between two batches of a dump makes the next batch repeat one, and a
 * destination added between two batches repeats one. Returns 0 or -ENOMEM. */
int ipvs_drop_duplicates(struct ipvs_handle *h);

/* The libnl version this shim was built against, e.g. "3.7.0". */
const char *ipvs_libnl_version(void);
