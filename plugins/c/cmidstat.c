/*
 * cmidstat: the table of live connections, every second, as a C monitor written for
 * mos_api.h (in the spirit of mOS's midstat sample; the same records as flowpeek's Rust
 * midstat plugin: "uid" and "start" come from flowpeek_flow_info, an addition to mOS's API).
 *
 * Every interval of host time (packet time for a capture, wall time live), through
 * mtcp_settimer, each core emits
 *
 *   {"ts":1500000001.000000,"core":0,"flows":2,"truncated":0,"table":[
 *     {"uid":"f7adf8f1190065d4","client":"10.0.0.1:5555","server":"10.0.0.2:80",
 *      "cli_state":"ESTABLISHED","svr_state":"ESTABLISHED","c2s_bytes":120,"s2c_bytes":5000,
 *      "start":1500000000.250000}, ...]}
 *
 * (one line), and one more with "final":true from mos_plugin_exit. `table` lists the live
 * connections in the order they were first seen, at most `max_rows`; the states come from
 * mtcp_getsockopt(MOS_TCP_STATE_CLI/SVR) at each MOS_ON_TCP_STATE_CHANGE; the byte counts
 * are the highest stream offset a packet of that direction reached (mtcp_getlastpkt's
 * offset + payloadlen). A connection leaves the table at its first MOS_ON_CONN_END. It needs
 * no receive buffer (MOS_CLIBUF/MOS_SVRBUF 0).
 *
 * Build:  cc -shared -fPIC -I plugin-api/c/include plugins/c/cmidstat.c -o libcmidstat.so
 * Config (cmidstat.toml): interval_ms = 1000, max_rows = 1000
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <mos_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char mos_plugin_version[] = "1.0";

#define GONE ((void *)1)

struct row {
	char client[64];
	char server[64];
	char uid[24]; /* "\"16 hex\"" or null */
	char start[32]; /* seconds.micros or null */
	int state[2]; /* -1: unknown */
	uint64_t bytes[2]; /* by sender: client (c2s), server (s2c) */
	struct row *prev, *next;
};

/* One instance per core: mos_plugin_init runs on each core, so keep per-core state by cpu. */
#define MAX_CORES 256
struct core {
	struct row head; /* list sentinel, creation order */
	uint64_t live;
	char *line;
	size_t cap;
	long interval_ms;
	unsigned long max_rows;
};
static struct core cores[MAX_CORES];

static const char *state_name(int s)
{
	static const char *names[] = {"CLOSED",	    "LISTEN",	  "SYN_SENT",	"SYN_RCVD",
				      "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT",
				      "CLOSING",     "LAST_ACK",   "TIME_WAIT"};
	return (s >= 0 && s <= TCP_TIME_WAIT) ? names[s] : "UNKNOWN";
}

static struct core *core_of(mctx_t mctx)
{
	return (mctx->cpu >= 0 && mctx->cpu < MAX_CORES) ? &cores[mctx->cpu] : NULL;
}

static void format_addr(mctx_t mctx, int sock, int side, char *out, size_t room)
{
	struct sockaddr_in6 a;
	socklen_t len = sizeof(a);
	char ip[INET6_ADDRSTRLEN];
	snprintf(out, room, "?");
	if (mtcp_getpeername(mctx, sock, (struct sockaddr *)&a, &len, side) < 0)
		return;
	if (a.sin6_family == AF_INET6) {
		inet_ntop(AF_INET6, &a.sin6_addr, ip, sizeof(ip));
		snprintf(out, room, "[%s]:%u", ip, ntohs(a.sin6_port));
	} else {
		struct sockaddr_in *v4 = (struct sockaddr_in *)&a;
		inet_ntop(AF_INET, &v4->sin_addr, ip, sizeof(ip));
		snprintf(out, room, "%s:%u", ip, ntohs(v4->sin_port));
	}
}

static int tcp_state(mctx_t mctx, int sock, int side)
{
	int st;
	socklen_t len = sizeof(st);
	int opt = side == MOS_SIDE_CLI ? MOS_TCP_STATE_CLI : MOS_TCP_STATE_SVR;
	if (mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, opt, &st, &len) < 0)
		return -1;
	return st;
}

/* The flow's row, made on its first event; NULL once it left the table. */
static struct row *row_of(mctx_t mctx, int sock)
{
	struct core *c = core_of(mctx);
	struct row *r = mtcp_get_uctx(mctx, sock);
	if (r == GONE || !c)
		return NULL;
	if (r)
		return r;
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	format_addr(mctx, sock, MOS_SIDE_CLI, r->client, sizeof(r->client));
	format_addr(mctx, sock, MOS_SIDE_SVR, r->server, sizeof(r->server));
	struct flowpeek_flow_info info;
	if (flowpeek_flow_info(mctx, sock, &info) == 0) {
		snprintf(r->uid, sizeof(r->uid), "\"%016" PRIx64 "\"", info.uid);
		snprintf(r->start, sizeof(r->start), "%" PRIu64 ".%06" PRIu64,
			 info.start_ns / 1000000000u, info.start_ns % 1000000000u / 1000u);
	} else {
		snprintf(r->uid, sizeof(r->uid), "null");
		snprintf(r->start, sizeof(r->start), "null");
	}
	r->state[0] = tcp_state(mctx, sock, MOS_SIDE_CLI);
	r->state[1] = tcp_state(mctx, sock, MOS_SIDE_SVR);
	r->prev = c->head.prev;
	r->next = &c->head;
	c->head.prev->next = r;
	c->head.prev = r;
	c->live++;
	mtcp_set_uctx(mctx, sock, r);
	return r;
}

static void on_event(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)arg;
	struct core *c = core_of(mctx);
	struct row *r = row_of(mctx, sock);
	struct pkt_info p;
	if (!r || !c)
		return;
	if (ev == MOS_ON_CONN_END) {
		r->prev->next = r->next;
		r->next->prev = r->prev;
		c->live--;
		free(r);
		mtcp_set_uctx(mctx, sock, GONE);
	} else if (ev == MOS_ON_TCP_STATE_CHANGE && (side == MOS_SIDE_CLI || side == MOS_SIDE_SVR)) {
		r->state[side] = tcp_state(mctx, sock, side);
	} else if (ev == MOS_ON_PKT_IN && mtcp_getlastpkt(mctx, sock, side, &p) == 0 &&
		   p.payloadlen > 0) {
		int sender = (p.sender == MOS_SIDE_CLI || p.sender == MOS_SIDE_SVR) ? p.sender : side;
		uint64_t end = p.offset + p.payloadlen;
		if (end > r->bytes[sender])
			r->bytes[sender] = end;
	}
}

/* Appends to the core's line, growing it. */
static int put(struct core *c, size_t *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#include <stdarg.h>
static int put(struct core *c, size_t *at, const char *fmt, ...)
{
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(c->line + *at, c->cap - *at, fmt, ap);
		va_end(ap);
		if (n < 0)
			return -1;
		if ((size_t)n < c->cap - *at) {
			*at += (size_t)n;
			return 0;
		}
		size_t cap = c->cap * 2 + (size_t)n + 256;
		char *bigger = realloc(c->line, cap);
		if (!bigger)
			return -1;
		c->line = bigger;
		c->cap = cap;
	}
}

static void report(mctx_t mctx, int last)
{
	struct core *c = core_of(mctx);
	size_t at = 0;
	unsigned long shown = 0;
	uint64_t ts = flowpeek_now_ns(mctx);
	if (!c)
		return;
	if (!c->line) {
		c->cap = 4096;
		c->line = malloc(c->cap);
		if (!c->line)
			return;
	}
	put(c, &at, "{\"ts\":%llu.%06llu,\"core\":%d,\"flows\":%llu,\"truncated\":%llu,",
	    (unsigned long long)(ts / 1000000000ull),
	    (unsigned long long)(ts % 1000000000ull / 1000ull), mctx->cpu,
	    (unsigned long long)c->live,
	    (unsigned long long)(c->live > c->max_rows ? c->live - c->max_rows : 0));
	if (last)
		put(c, &at, "\"final\":true,");
	put(c, &at, "\"table\":[");
	for (struct row *r = c->head.next; r != &c->head && shown < c->max_rows; r = r->next) {
		put(c, &at,
		    "%s{\"uid\":%s,\"client\":\"%s\",\"server\":\"%s\",\"cli_state\":\"%s\","
		    "\"svr_state\":\"%s\",\"c2s_bytes\":%llu,\"s2c_bytes\":%llu,\"start\":%s}",
		    shown ? "," : "", r->uid, r->client, r->server, state_name(r->state[0]),
		    state_name(r->state[1]), (unsigned long long)r->bytes[0],
		    (unsigned long long)r->bytes[1], r->start);
		shown++;
	}
	put(c, &at, "]}");
	flowpeek_emit(mctx, c->line, at);
}

static void tick(mctx_t mctx, int id, int side, event_t ev, filter_arg_t *arg)
{
	(void)side;
	(void)ev;
	(void)arg;
	struct core *c = core_of(mctx);
	if (!c)
		return;
	struct timeval tv = {c->interval_ms / 1000, (c->interval_ms % 1000) * 1000};
	report(mctx, 0);
	mtcp_settimer(mctx, id, &tv, tick);
}

int mos_plugin_init(mctx_t mctx, const char *config)
{
	struct core *c = core_of(mctx);
	const char *p = config;
	int zero = 0;
	int sock;
	if (!c)
		return -1;
	c->head.next = c->head.prev = &c->head;
	c->interval_ms = 1000;
	c->max_rows = 1000;
	while (p && *p) {
		long v;
		if (sscanf(p, " interval_ms = %ld", &v) == 1)
			c->interval_ms = v;
		else if (sscanf(p, " max_rows = %ld", &v) == 1 && v >= 0)
			c->max_rows = (unsigned long)v;
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	if (c->interval_ms < 1) {
		fprintf(stderr, "cmidstat: interval_ms must be at least 1\n");
		return -1;
	}
	struct timeval tv = {c->interval_ms / 1000, (c->interval_ms % 1000) * 1000};
	sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0);
	if (sock < 0 ||
	    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, &zero, sizeof(zero)) < 0 ||
	    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, &zero, sizeof(zero)) < 0 ||
	    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, on_event) < 0 ||
	    mtcp_register_callback(mctx, sock, MOS_ON_TCP_STATE_CHANGE, MOS_HK_SND, on_event) < 0 ||
	    mtcp_register_callback(mctx, sock, MOS_ON_TCP_STATE_CHANGE, MOS_HK_RCV, on_event) < 0 ||
	    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_SND, on_event) < 0 ||
	    mtcp_settimer(mctx, 0, &tv, tick) < 0)
		return -1;
	return 0;
}

void mos_plugin_exit(mctx_t mctx)
{
	struct core *c = core_of(mctx);
	report(mctx, 1);
	if (!c)
		return;
	while (c->head.next != &c->head) {
		struct row *r = c->head.next;
		c->head.next = r->next;
		free(r);
	}
	c->head.prev = &c->head;
	c->live = 0;
	free(c->line);
	c->line = NULL;
	c->cap = 0;
}
