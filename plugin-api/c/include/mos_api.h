/*
 * mos_api.h: the monitoring API of mOS 0.3 (KAIST), for C monitors hosted by flowpeek.
 *
 * A C monitor is one file built with exactly
 *
 *     cc -shared -fPIC -I plugin-api/c/include monitor.c -o libmonitor.so
 *
 * and dropped into flowpeek's plugin directory. Nothing is linked: every mtcp_* function
 * below is a static inline wrapper over a table of host functions, which the host stores in
 * `flowpeek_mos_host` (defined here, weak, so several files of one monitor share it) right
 * after loading the library and before calling it.
 *
 * The library exports
 *
 *     int  mos_plugin_init(mctx_t mctx, const char *config);   (required)
 *     void mos_plugin_exit(mctx_t mctx);                       (optional)
 *     const char mos_plugin_version[];                         (optional, e.g. "1.2")
 *
 * mos_plugin_init runs once per core with that core's context and the text of <name>.toml
 * (NULL when there is none), where <name> is the library's file name without "lib" and
 * ".so" (libmonitor.so: "monitor"; its records go to <log-dir>/monitor.jsonl). It does what
 * an mOS program's per-core setup does (mtcp_socket, mtcp_bind_monitor_filter,
 * mtcp_register_callback, mtcp_define_event, mtcp_settimer) and returns 0, or -1 to refuse
 * loading. mos_plugin_exit runs at shutdown, or when a hot reload retires this generation
 * (after its last flow ended); API calls work in it (flowpeek_emit a final record there).
 *
 * Names, types, constants and semantics are mOS 0.3's (mos_api.h, mtcp_api.h and the man
 * pages; docs/mtcp_ppeek.txt). Where mOS 0.3 is buggy flowpeek keeps its documented
 * behaviour (docs/SPEC.md section 6), and where flowpeek has more it says so below with
 * "flowpeek:". Every function sets errno and returns -1 (or 0 / NULL where mOS does) on
 * failure, like mOS.
 *
 * Data calls (mtcp_peek, mtcp_ppeek, mtcp_getsockopt, ...) work only inside a callback of
 * the core whose mctx they get (and in mos_plugin_exit): anywhere else, including
 * mos_plugin_init and other threads, they fail with EACCES. Setup calls (mtcp_socket,
 * mtcp_bind_monitor_filter, mtcp_define_event, mtcp_alloc_event) work only in
 * mos_plugin_init; mtcp_register_callback and mtcp_settimer work in both.
 */
#ifndef MOS_API_H_
#define MOS_API_H_

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <netinet/in.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of the host table below; the host refuses a library built for another one. */
#define FLOWPEEK_MOS_ABI 1

/* ---- contexts and sockets (mtcp_api.h) ------------------------------------------------ */

/** The per-core context. `cpu` is the core number, as in mOS. */
struct mtcp_context {
	int cpu;
};
typedef struct mtcp_context *mctx_t;

/** Socket types (mOS numbering). flowpeek hosts the two monitoring kinds: one
 * MOS_SOCK_MONITOR_STREAM and one MOS_SOCK_MONITOR_RAW socket per core at most. The socket
 * id a callback receives for a flow is that flow's MOS_SOCK_MONITOR_STREAM_ACTIVE socket. */
enum socket_type {
	MOS_SOCK_UNUSED,
	MOS_SOCK_STREAM_LISTEN,
	MOS_SOCK_PROXY_LISTEN,
	MOS_SOCK_MONITOR_STREAM,
	MOS_SOCK_STREAM,
	MOS_SOCK_PROXY,
	MOS_SOCK_MONITOR_STREAM_ACTIVE,
	MOS_SOCK_MONITOR_RAW,
	MOS_SOCK_EPOLL,
	MOS_SOCK_PIPE,
};

/* ---- hooks, events, sides (mos_api.h) ------------------------------------------------- */

/** Hooking points. MOS_HK_SND: after the sender's emulated stack took the packet (side =
 * sender); MOS_HK_RCV: after the receiver's (side = receiver); MOS_NULL: not tied to one
 * stack (CONN_NEW_DATA, ERROR, TIMEOUT, ORPHAN, and PKT_IN of a raw socket). */
enum mtcp_hook_point {
	MOS_NULL = (1 << 29),
	MOS_HK_RCV = (1 << 30),
	MOS_HK_SND = (-2147483647 - 1), /* (1 << 31) */
};

/** An event: one bit. Built-in events are mOS's bits; user-defined events are bits 32-63
 * (flowpeek: mOS numbers them from bit 12; a program only ever uses the value it got). */
typedef uint64_t event_t;

/** Built-in events (mOS bits), with the hooks flowpeek accepts for each (EINVAL otherwise):
 *   MOS_ON_PKT_IN            SND, RCV (stream socket); NULL (raw socket)
 *   MOS_ON_CONN_START        SND, RCV
 *   MOS_ON_CONN_NEW_DATA     NULL   (once per side per batch, only when contiguous data grew)
 *   MOS_ON_ERROR             NULL
 *   MOS_ON_TIMEOUT           NULL   (flowpeek raises it before idle expiry; mOS 0.3 never)
 *   MOS_ON_TCP_STATE_CHANGE  SND, RCV
 *   MOS_ON_ORPHAN            NULL
 *   MOS_ON_REXMIT            RCV
 *   MOS_ON_CONN_END          SND, RCV
 * A user-defined event takes the hooks of its base. MOS_ON_PKT_OUT, MOS_ON_CONN_SETUP and
 * MOS_ON_DEBUG_MESSAGE are deprecated in mOS and refused (EINVAL). */
enum mos_event_type {
	MOS_NULL_EVENT = 0,
	MOS_ON_PKT_IN = (0x1 << 0),
	MOS_ON_PKT_OUT = (0x1 << 1),
	MOS_ON_CONN_START = (0x1 << 2),
	MOS_ON_CONN_SETUP = (0x1 << 3),
	MOS_ON_CONN_NEW_DATA = (0x1 << 4),
	MOS_ON_ERROR = (0x1 << 5),
	MOS_ON_TIMEOUT = (0x1 << 6),
	MOS_ON_TCP_STATE_CHANGE = (0x1 << 7),
	MOS_ON_ORPHAN = (0x1 << 8),
	MOS_ON_REXMIT = (0x1 << 9),
	MOS_ON_CONN_END = (0x1 << 10),
	MOS_ON_DEBUG_MESSAGE = (0x1 << 11),
};

/** Sides. The receive buffer of a side holds what that side received: MOS_SIDE_SVR holds
 * the client's bytes (the request), MOS_SIDE_CLI the server's. */
enum { MOS_SIDE_CLI = 0, MOS_SIDE_SVR, MOS_SIDE_BOTH };

/** The argument of a user-defined event's filter (and of its callbacks). */
typedef struct filter_arg {
	void *arg;
	size_t len;
} filter_arg_t;

/** A callback: `sock` is the flow's socket (the raw socket for a raw PKT_IN, the stream
 * socket for ORPHAN, the timer id for mtcp_settimer), `side` the event's side. `arg` is the
 * filter_arg of a user-defined event, NULL for built-in events and timers. */
typedef void (*callback_t)(mctx_t mctx, int sock, int side, event_t event, filter_arg_t *arg);
/** A user-defined event's filter: true raises the event. It may read the flow (mtcp_ppeek,
 * mtcp_getsockopt ...) but not mtcp_peek (EACCES: a filter has no cursor of its own);
 * records it emits are discarded. */
typedef bool (*filter_t)(mctx_t mctx, int sock, int side, event_t event, filter_arg_t *arg);

/* ---- socket options (SOL_MONSOCKET) --------------------------------------------------- */

#define SOL_MONSOCKET 0xfffe

enum mos_socket_opts {
	MOS_FRAGINFO_CLIBUF = 0x01, /* get: struct tcp_ring_fragment[], *optlen in elements */
	MOS_FRAGINFO_SVRBUF = 0x02,
	MOS_INFO_CLIBUF = 0x03,     /* get: struct tcp_buf_info */
	MOS_INFO_SVRBUF = 0x04,
	MOS_TCP_STATE_CLI = 0x05,   /* get: int, enum tcpstate */
	MOS_TCP_STATE_SVR = 0x06,
	MOS_TIMESTAMP = 0x07,       /* get: uint32_t, the flow's last packet time in us
	                             * (flowpeek: uint64_t us when *optlen >= 8) */
	MOS_CLIBUF = 0x09,          /* set: int, receive buffer bytes of that side (0 disables) */
	MOS_SVRBUF = 0x0a,
	MOS_SEQ_REMAP = 0x0b,       /* not supported (ENOPROTOOPT), as in mOS 0.3 */
	MOS_STOP_MON = 0x0c,        /* set: int side (MOS_SIDE_CLI, _SVR or _BOTH) */
	MOS_FRAG_CLIBUF = 0x0d,     /* not supported (ENOPROTOOPT), as in mOS 0.3 */
	MOS_FRAG_SVRBUF = 0x0e,
	MOS_CLIOVERLAP = 0x0f,      /* set: int, MOS_OVERLAP_POLICY_FIRST or _LAST */
	MOS_SVROVERLAP = 0x10,
};

/** Receive-buffer positions as 32-bit sequence numbers (mOS), then (flowpeek) the same as
 * 64-bit stream offsets and the buffer's size. Give *optlen = sizeof(struct tcp_buf_info)
 * for all of it, or 16 for mOS's four fields only. */
struct tcp_buf_info {
	uint32_t tcpbi_init_seq;           /* sequence number of offset 0 (ISN + 1) */
	uint32_t tcpbi_last_byte_read;     /* this monitor's mtcp_peek position */
	uint32_t tcpbi_next_byte_expected; /* end of the contiguous data */
	uint32_t tcpbi_last_byte_received; /* end of the last stored fragment */
	/* flowpeek: */
	uint64_t tcpbi_head_off;           /* oldest stored offset */
	uint64_t tcpbi_read_off;           /* mtcp_peek position */
	uint64_t tcpbi_contig_off;         /* end of the contiguous data */
	uint64_t tcpbi_last_off;           /* end of the last stored fragment */
	uint64_t tcpbi_missing;            /* bytes skipped over gaps never filled */
	uint32_t tcpbi_capacity;           /* buffer size in bytes, 0: disabled */
	uint32_t tcpbi_reserved;
};

/** A stored fragment [offset, offset + len) of a receive buffer (offset 0 = ISN + 1). */
struct tcp_ring_fragment {
	uint64_t offset;
	uint32_t len;
};

enum tcpstate {
	TCP_CLOSED = 0,
	TCP_LISTEN = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RCVD = 3,
	TCP_ESTABLISHED = 4,
	TCP_FIN_WAIT_1 = 5,
	TCP_FIN_WAIT_2 = 6,
	TCP_CLOSE_WAIT = 7,
	TCP_CLOSING = 8,
	TCP_LAST_ACK = 9,
	TCP_TIME_WAIT = 10
};

enum { MOS_OVERLAP_POLICY_FIRST = 0, MOS_OVERLAP_POLICY_LAST, MOS_OVERLAP_CNT };

/* ---- packets and filters -------------------------------------------------------------- */

/** The last packet of a flow (mtcp_getlastpkt). `offset` is its position in its sender's
 * stream (flowpeek: mOS 0.3 computes it in the wrong direction). The header pointers are
 * NULL and eth_len / ip_len 0 in this version; flowpeek adds the sender, the TCP flags and a
 * 64-bit timestamp. */
struct pkt_info {
	uint32_t cur_ts;     /* packet time, microseconds (wraps, as in mOS) */
	int8_t in_ifidx;     /* -1: not known */
	uint16_t eth_len;
	uint16_t ip_len;
	uint64_t offset;
	uint16_t payloadlen;
	uint32_t seq;
	uint32_t ack_seq;
	uint16_t window;
	struct ethhdr *ethh;
	struct iphdr *iph;
	struct tcphdr *tcph;
	uint8_t *payload;
	/* flowpeek: */
	uint64_t ts_ns;      /* packet time, nanoseconds */
	uint8_t tcp_flags;   /* FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20 ... */
	int8_t sender;       /* MOS_SIDE_CLI or MOS_SIDE_SVR */
};

/** A monitor's filter in tcpdump syntax, compiled and matched by libpcap (any expression
 * libpcap takes, not only mOS's keyword subset). stream_syn_filter decides on each flow's
 * first packet (its SYN, or the first packet seen of a flow picked up mid-stream) whether
 * the flow is tracked for this monitor; raw_pkt_filter decides per flow for a raw socket
 * (flowpeek: not per packet). stream_orphan_filter is checked but not applied yet: ORPHAN
 * callbacks get every orphan that flowpeek's --filter lets through. A
 * `filter = "..."` in <name>.toml overrides stream_syn_filter / raw_pkt_filter. */
union monitor_filter {
	char *raw_pkt_filter;
	struct {
		char *stream_syn_filter;
		char *stream_orphan_filter;
	};
};
typedef union monitor_filter *monitor_filter_t;

/** flowpeek: what flowpeek_flow_info tells of a connection (not in mOS). */
struct flowpeek_flow_info {
	/** The flow id of every flowpeek record (docs/records.md: `uid`, printed as 16
	 * lower-case hex digits, e.g. with "%016" PRIx64): derived from both endpoints and the
	 * start, so that a C monitor's records join the Rust plugins' and `flowpeek streams`'. */
	uint64_t uid;
	/** The time of the flow's first packet and of its latest one (ns since the epoch). */
	uint64_t start_ns;
	uint64_t last_ns;
	/** The flow's place in this core's creation order (0 for the first). */
	uint64_t serial;
};

/* ---- the host table (not for monitors to use directly) -------------------------------- */

struct flowpeek_mos_api {
	uint32_t abi;
	uint32_t size;
	/* Functions return a negative errno on failure, unless they take `int *err`. */
	int (*socket)(mctx_t, int domain, int type, int protocol);
	int (*bind_monitor_filter)(mctx_t, int sock, const union monitor_filter *ft);
	int (*register_callback)(mctx_t, int sock, event_t ev, int hook, callback_t cb);
	event_t (*define_event)(event_t ev, filter_t ft, struct filter_arg *arg, int *err);
	event_t (*alloc_event)(event_t ev, int *err);
	int (*raise_event)(mctx_t, event_t ev);
	ssize_t (*peek)(mctx_t, int sock, int side, char *buf, size_t len, uint64_t *lost);
	ssize_t (*ppeek)(mctx_t, int sock, int side, char *buf, size_t len, uint64_t off);
	int (*getsockopt)(mctx_t, int sock, int level, int optname, void *optval, socklen_t *optlen);
	int (*setsockopt)(mctx_t, int sock, int level, int optname, const void *optval,
			  socklen_t optlen);
	int (*getpeername)(mctx_t, int sock, struct sockaddr *addr, socklen_t *addrlen, int side);
	int (*getlastpkt)(mctx_t, int sock, int side, struct pkt_info *p);
	void *(*get_uctx)(mctx_t, int sock, int *err);
	int (*set_uctx)(mctx_t, int sock, void *uctx);
	int (*settimer)(mctx_t, int id, const struct timeval *timeout, callback_t cb);
	uint64_t (*now_ns)(mctx_t, int *err);
	int (*emit)(mctx_t, const char *record, size_t len);
	/* Appended after the first release: check `size` before calling (flowpeek_flow_info
	 * does). */
	int (*flow_info)(mctx_t, int sock, struct flowpeek_flow_info *out);
};

/* Filled by the host before mos_plugin_init runs. */
__attribute__((weak, visibility("default"))) const struct flowpeek_mos_api *flowpeek_mos_host = 0;
__attribute__((weak, visibility("default"))) const uint32_t flowpeek_mos_abi = FLOWPEEK_MOS_ABI;

static inline int flowpeek_ret_(long long r)
{
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return (int)r;
}

#define FLOWPEEK_HOST_ (flowpeek_mos_host)
#define FLOWPEEK_NOHOST_(ret) do { if (!FLOWPEEK_HOST_) { errno = EACCES; return ret; } } while (0)

/* ---- the API -------------------------------------------------------------------------- */

/** Creates a monitoring socket (MOS_SOCK_MONITOR_STREAM or MOS_SOCK_MONITOR_RAW; `domain`
 * and `protocol` are not used). Returns its id, or -1: EINVAL another type, EEXIST one of
 * that type exists already on this core, EACCES outside mos_plugin_init. */
static inline int mtcp_socket(mctx_t mctx, int domain, int type, int protocol)
{
	FLOWPEEK_NOHOST_(-1);
	return flowpeek_ret_(FLOWPEEK_HOST_->socket(mctx, domain, type, protocol));
}

/** Sets the socket's filter (NULL or NULL fields: every flow). A bad expression fails with
 * EINVAL and libpcap's message on flowpeek's stderr. */
static inline int mtcp_bind_monitor_filter(mctx_t mctx, int sock, monitor_filter_t ft)
{
	FLOWPEEK_NOHOST_(-1);
	return flowpeek_ret_(FLOWPEEK_HOST_->bind_monitor_filter(mctx, sock, ft));
}

/** Registers `cb` for `event` (one or more event bits) at `hook_point` on `sock`: on a
 * monitoring socket for every flow, on a flow's socket (inside a callback) for that flow
 * only. A NULL cb unregisters. EINVAL: unknown event, a hook the event does not allow, a
 * callback already registered for that pair (mOS refuses to overwrite). */
static inline int mtcp_register_callback(mctx_t mctx, int sock, event_t event, int hook_point,
					 callback_t cb)
{
	FLOWPEEK_NOHOST_(-1);
	return flowpeek_ret_(FLOWPEEK_HOST_->register_callback(mctx, sock, event, hook_point, cb));
}

/** Defines a user event: when `event` fires for a flow and `filter(..., arg)` returns true,
 * the new event fires right after it. Returns its bit, 0 on error (EINVAL, ENOSPC after 32,
 * EACCES outside mos_plugin_init). Defining the same (event, filter, arg) twice returns the
 * same bit. */
static inline event_t mtcp_define_event(event_t event, filter_t filter, struct filter_arg *arg)
{
	int err = 0;
	event_t r;
	FLOWPEEK_NOHOST_(0);
	r = FLOWPEEK_HOST_->define_event(event, filter, arg, &err);
	if (!r)
		errno = err;
	return r;
}

/** Allocates a child event of `event` without a filter, raised with mtcp_raise_event.
 * Returns its bit, 0 on error. */
static inline event_t mtcp_alloc_event(event_t event)
{
	int err = 0;
	event_t r;
	FLOWPEEK_NOHOST_(0);
	r = FLOWPEEK_HOST_->alloc_event(event, &err);
	if (!r)
		errno = err;
	return r;
}

/** Raises `event` (from mtcp_alloc_event) for the flow and side of the running callback; it
 * is delivered right after this callback. Inside a callback of its parent event only. */
static inline int mtcp_raise_event(mctx_t mctx, event_t event)
{
	FLOWPEEK_NOHOST_(-1);
	return flowpeek_ret_(FLOWPEEK_HOST_->raise_event(mctx, event));
}

/** Reads in-order bytes of `side` from this monitor's position and moves it on. Returns the
 * number of bytes, 0 when there is nothing new (mOS 0.3 exits the program there). If bytes
 * after the position were discarded (or skipped over a gap) before they were read, returns
 * -n with errno ENODATA, n being how many, and moves the position past them. Errors: as
 * mtcp_ppeek, and EACCES inside a filter. */
static inline ssize_t mtcp_peek(mctx_t mctx, int sock, int side, char *buf, size_t len)
{
	uint64_t lost = 0;
	long long r;
	FLOWPEEK_NOHOST_(-1);
	r = FLOWPEEK_HOST_->peek(mctx, sock, side, buf, len, &lost);
	if (r == -ENODATA && lost > 0) {
		errno = ENODATA;
		return -(ssize_t)lost;
	}
	return r < 0 ? (errno = (int)-r, -1) : (ssize_t)r;
}

/** Copies up to `len` stored bytes of `side` from stream offset `off` (0 = ISN + 1) into
 * `buf` (docs/mtcp_ppeek.txt). It stops at the end of the fragment holding `off`, so it
 * returns fewer bytes at a gap; `off` may lie in an out-of-order fragment. It moves no
 * position and discards nothing. Returns the number of bytes (0 only when len is 0), or -1:
 *   EACCES          mctx is not the running callback's context (or no callback runs)
 *   EBADF           sock names no live flow (never did, or its flow ended)
 *   EINVAL          buffer management of that side is disabled (MOS_CLIBUF/SVRBUF 0), or
 *                   side is not MOS_SIDE_CLI / MOS_SIDE_SVR
 *   ESOCKTNOSUPPORT sock is not a flow's socket (a monitoring or raw socket)
 *   ENOTCONN        that side's stream does not exist yet (e.g. before its SYN)
 *   ENODATA         no stored byte at off (discarded, in a gap, or beyond the data)
 *   EPERM           this monitor stopped monitoring the flow (MOS_STOP_MON)
 * (mOS 0.3 returns -1 without errno on a miss, and EACCES for a disabled buffer.) */
static inline ssize_t mtcp_ppeek(mctx_t mctx, int sock, int side, char *buf, size_t len,
				 uint64_t off)
{
	long long r;
	FLOWPEEK_NOHOST_(-1);
	r = FLOWPEEK_HOST_->ppeek(mctx, sock, side, buf, len, off);
	return r < 0 ? (errno = (int)-r, -1) : (ssize_t)r;
}

/** Reads an option at SOL_MONSOCKET of a flow's socket (see enum mos_socket_opts). Errors:
 * EINVAL (level, NULL pointers, *optlen too small), ENOPROTOOPT (optname), ENOTSOCK (not a
 * flow's socket, as mOS), and those of mtcp_ppeek. MOS_FRAGINFO_*: on return *optlen is the
 * number of fragments stored, which may exceed the array (only that many are written). */
static inline int mtcp_getsockopt(mctx_t mctx, int sock, int level, int optname, void *optval,
				  socklen_t *optlen)
{
	FLOWPEEK_NOHOST_(-1);
	return flowpeek_ret_(FLOWPEEK_HOST_->getsockopt(mctx, sock, level, optname, optval, optlen));
}

/** Sets an option at SOL_MONSOCKET. On a monitoring socket in mos_plugin_init, MOS_CLIBUF /
 * MOS_SVRBUF set the buffer size of every flow (flowpeek: any size, 0 disables; mOS 0.3
 * takes only 0 at run time). On a flow's socket: MOS_CLIBUF/SVRBUF resize that flow's
 * buffer, MOS_CLIOVERLAP/SVROVERLAP set its overlap policy, MOS_STOP_MON stops monitoring a
 * side or both (both: this monitor's CONN_END comes right after this callback; mOS 0.3
 * ignores MOS_SIDE_BOTH). */
static inline int mtcp_setsockopt(mctx_t mctx, int sock, int level, int optname,
				  const void *optval, socklen_t optlen)
{
	FLOWPEEK_NOHOST_(-1);
	return flowpeek_ret_(FLOWPEEK_HOST_->setsockopt(mctx, sock, level, optname, optval, optlen));
}

/** The address of one side (MOS_SIDE_CLI: the client, MOS_SIDE_SVR: the server), or with
 * MOS_SIDE_BOTH two addresses, client then server. IPv4 flows give struct sockaddr_in;
 * flowpeek: IPv6 flows give struct sockaddr_in6 (`*addrlen` must hold one, or two for
 * MOS_SIDE_BOTH; EINVAL otherwise). *addrlen is set to the bytes written. */
static inline int mtcp_getpeername(mctx_t mctx, int sock, struct sockaddr *saddr,
				   socklen_t *addrlen, int side)
{
	FLOWPEEK_NOHOST_(-1);
	return flowpeek_ret_(FLOWPEEK_HOST_->getpeername(mctx, sock, saddr, addrlen, side));
}

/** The flow's last packet (see struct pkt_info). ENODATA: no packet yet. */
static inline int mtcp_getlastpkt(mctx_t mctx, int sock, int side, struct pkt_info *p)
{
	FLOWPEEK_NOHOST_(-1);
	return flowpeek_ret_(FLOWPEEK_HOST_->getlastpkt(mctx, sock, side, p));
}

/** Stores a per-flow (flow socket) or per-monitor (monitoring socket) user pointer. */
static inline void mtcp_set_uctx(mctx_t mctx, int sock, void *uctx)
{
	int r;
	if (!FLOWPEEK_HOST_) {
		errno = EACCES;
		return;
	}
	r = FLOWPEEK_HOST_->set_uctx(mctx, sock, uctx);
	if (r < 0)
		errno = -r;
}

/** The pointer stored with mtcp_set_uctx (NULL until set, or on error with errno set). */
static inline void *mtcp_get_uctx(mctx_t mctx, int sock)
{
	int err = 0;
	void *r;
	FLOWPEEK_NOHOST_(NULL);
	r = FLOWPEEK_HOST_->get_uctx(mctx, sock, &err);
	if (err)
		errno = err;
	return r;
}

/** Calls cb(mctx, id, 0, 0, NULL) once, `timeout` from now (packet time for a capture, wall
 * time live), at the end of the batch it falls due in. Set again from the callback for a
 * periodic timer. Called in mos_plugin_init, it counts from the first event of this core. */
static inline int mtcp_settimer(mctx_t mctx, int id, struct timeval *timeout, callback_t cb)
{
	FLOWPEEK_NOHOST_(-1);
	return flowpeek_ret_(FLOWPEEK_HOST_->settimer(mctx, id, timeout, cb));
}

/** The host's clock in microseconds, truncated to 32 bits as in mOS; 0 on failure. */
static inline uint32_t mtcp_cb_get_ts(mctx_t mctx)
{
	int err = 0;
	uint64_t ns;
	FLOWPEEK_NOHOST_(0);
	ns = FLOWPEEK_HOST_->now_ns(mctx, &err);
	if (err) {
		errno = err;
		return 0;
	}
	return (uint32_t)(ns / 1000);
}

/* ---- flowpeek's additions -------------------------------------------------------------- */

/** flowpeek: the host's clock in nanoseconds since the epoch (0 on failure). */
static inline uint64_t flowpeek_now_ns(mctx_t mctx)
{
	int err = 0;
	uint64_t ns;
	FLOWPEEK_NOHOST_(0);
	ns = FLOWPEEK_HOST_->now_ns(mctx, &err);
	if (err)
		errno = err;
	return err ? 0 : ns;
}

/** flowpeek: writes one record (a line of JSON, without newline, at most 1 MiB) to
 * <log-dir>/<name>.jsonl, as the Rust SDK's emit does. 0, or -1 (EINVAL, EACCES). */
static inline int flowpeek_emit(mctx_t mctx, const char *record, size_t len)
{
	FLOWPEEK_NOHOST_(-1);
	return flowpeek_ret_(FLOWPEEK_HOST_->emit(mctx, record, len));
}

/** flowpeek: the flow id, start and latest packet time of the connection of `sock` (a
 * per-flow socket) into *out. 0, or -1: EBADF not a socket, ENOTSOCK the listening socket,
 * EINVAL out is NULL, EACCES outside a callback, ENOSYS a host older than this header. */
static inline int flowpeek_flow_info(mctx_t mctx, int sock, struct flowpeek_flow_info *out)
{
	FLOWPEEK_NOHOST_(-1);
	if (FLOWPEEK_HOST_->size < offsetof(struct flowpeek_mos_api, flow_info) +
					   sizeof(FLOWPEEK_HOST_->flow_info)) {
		errno = ENOSYS;
		return -1;
	}
	return flowpeek_ret_(FLOWPEEK_HOST_->flow_info(mctx, sock, out));
}

#ifdef __cplusplus
}
#endif

#endif /* MOS_API_H_ */
