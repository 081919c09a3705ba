/*
 * A C test monitor for host/tests/c_plugins.rs: `mode = NAME` in probe.toml chooses what it
 * provokes; each result is emitted as {"what":"...","ret":R,"errno":"NAME"[,"hex":"..."]}.
 */
#include <arpa/inet.h>
#include <mos_api.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static char mode[64];
static int lsock = -1;
static int init_ret, init_errno, reg_ret, reg_errno;
static int told;
static int server_port(mctx_t mctx, int sock);
static int stale = -1;
static int rsock = -1;
static long raw_packets;
static int raw_errno;

static const char *ename(int e)
{
	switch (e) {
	case 0: return "0";
	case EACCES: return "EACCES";
	case EBADF: return "EBADF";
	case EINVAL: return "EINVAL";
	case ESOCKTNOSUPPORT: return "ESOCKTNOSUPPORT";
	case ENOTCONN: return "ENOTCONN";
	case ENODATA: return "ENODATA";
	case EPERM: return "EPERM";
	case ENOTSOCK: return "ENOTSOCK";
	default: return "OTHER";
	}
}

static void say(mctx_t mctx, const char *what, long r, int e, const char *hex)
{
	char line[256];
	int n = snprintf(line, sizeof(line), "{\"what\":\"%s\",\"ret\":%ld,\"errno\":\"%s\"%s%s%s}",
			 what, r, r < 0 ? ename(e) : "0", hex ? ",\"hex\":\"" : "", hex ? hex : "",
			 hex ? "\"" : "");
	flowpeek_emit(mctx, line, (size_t)n);
}

/* mtcp_ppeek with context `with`; the result is emitted through the real `mctx`. */
static void ppeek_as(mctx_t mctx, mctx_t with, const char *what, int sock, int side, size_t len,
		     uint64_t off)
{
	char buf[4096], hex[64] = "";
	errno = 0;
	ssize_t r = mtcp_ppeek(with, sock, side, buf, len < sizeof(buf) ? len : sizeof(buf), off);
	int e = errno;
	for (ssize_t i = 0; r > 0 && i < r && i < 8; i++)
		snprintf(hex + 2 * i, 3, "%02x", (unsigned char)buf[i]);
	say(mctx, what, (long)r, e, r > 0 ? hex : NULL);
}

static void ppeek_say(mctx_t mctx, const char *what, int sock, int side, size_t len, uint64_t off)
{
	ppeek_as(mctx, mctx, what, sock, side, len, off);
}

static void on_start(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)ev;
	(void)arg;
	(void)side;
	if (!told) {
		told = 1;
		say(mctx, "init_ppeek", init_ret, init_errno, NULL);
		say(mctx, "init_bad_hook", reg_ret, reg_errno, NULL);
	}
	if (!strcmp(mode, "eacces")) {
		struct mtcp_context other = {mctx->cpu};
		ppeek_as(mctx, &other, "foreign_mctx", sock, MOS_SIDE_SVR, 16, 0);
		ppeek_as(mctx, NULL, "null_mctx", sock, MOS_SIDE_SVR, 16, 0);
	} else if (!strcmp(mode, "ebadf")) {
		ppeek_say(mctx, "never_a_socket", 123456, MOS_SIDE_SVR, 16, 0);
		ppeek_say(mctx, "negative", -5, MOS_SIDE_SVR, 16, 0);
		if (stale >= 0)
			ppeek_say(mctx, "ended_flow", stale, MOS_SIDE_SVR, 16, 0);
	} else if (!strcmp(mode, "einval")) {
		int zero = 0;
		int r = mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, &zero, sizeof(zero));
		say(mctx, "disable_svrbuf", r, errno, NULL);
		ppeek_say(mctx, "disabled_side", sock, MOS_SIDE_SVR, 16, 0);
		ppeek_say(mctx, "bad_side", sock, 7, 16, 0);
	} else if (!strcmp(mode, "esocktnosupport")) {
		ppeek_say(mctx, "monitoring_socket", lsock, MOS_SIDE_SVR, 16, 0);
	} else if (!strcmp(mode, "addr6")) {
		struct sockaddr_in6 a[2];
		struct sockaddr_in small;
		socklen_t len = sizeof(a);
		int r = mtcp_getpeername(mctx, sock, (struct sockaddr *)a, &len, MOS_SIDE_BOTH);
		say(mctx, "both_len", r == 0 ? (long)len : r, errno, NULL);
		say(mctx, "cli_family_port",
		    r == 0 && a[0].sin6_family == AF_INET6 ? ntohs(a[0].sin6_port) : -2, 0, NULL);
		say(mctx, "svr_family_port",
		    r == 0 && a[1].sin6_family == AF_INET6 ? ntohs(a[1].sin6_port) : -2, 0, NULL);
		len = sizeof(small);
		r = mtcp_getpeername(mctx, sock, (struct sockaddr *)&small, &len, MOS_SIDE_CLI);
		say(mctx, "v6_into_sockaddr_in", r, errno, NULL);
	} else if (!strcmp(mode, "unreg")) {
		if (server_port(mctx, sock) == 8080) {
			int r = mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, NULL);
			say(mctx, "unregister", r, errno, NULL);
		}
	} else if (!strcmp(mode, "filter")) {
		struct sockaddr_in a[2];
		socklen_t len = sizeof(a);
		int r = mtcp_getpeername(mctx, sock, (struct sockaddr *)a, &len, MOS_SIDE_BOTH);
		say(mctx, "server_port", r == 0 ? ntohs(a[1].sin_port) : r, errno, NULL);
	} else if (!strcmp(mode, "enotconn")) {
		ppeek_say(mctx, "cli_at_syn", sock, MOS_SIDE_CLI, 16, 0);
		ppeek_say(mctx, "svr_at_syn", sock, MOS_SIDE_SVR, 16, 0);
	}
}

static event_t ev_req, ev_child, ev_again;
static int filter_arg_value = 42;
static int filter_peek, filter_peek_errno, filter_ppeek, filter_calls;
static struct filter_arg farg = {&filter_arg_value, sizeof(filter_arg_value)};

static int server_port(mctx_t mctx, int sock)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	if (mtcp_getpeername(mctx, sock, (struct sockaddr *)&a, &len, MOS_SIDE_SVR) < 0)
		return -1;
	return ntohs(a.sin_port);
}

/* The request side only; it reads the flow, and may not peek. */
static bool is_request(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	char b[4];
	(void)ev;
	errno = 0;
	filter_peek = (int)mtcp_peek(mctx, sock, side, b, sizeof(b));
	filter_peek_errno = errno;
	filter_ppeek = (int)mtcp_ppeek(mctx, sock, side, b, sizeof(b), 0);
	filter_calls++;
	return side == MOS_SIDE_SVR && arg == &farg && *(int *)arg->arg == 42;
}

static void on_child(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)sock;
	(void)arg;
	if (ev == ev_child)
		say(mctx, "raised_side", side, 0, NULL);
}

static void on_req(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)sock;
	if (ev != ev_req || arg != &farg)
		return;
	say(mctx, "ude_side", side, 0, NULL);
	/* Records emitted inside a filter are discarded: report what it saw from here. */
	say(mctx, "filter_calls", filter_calls, 0, NULL);
	say(mctx, "filter_peek", filter_peek, filter_peek_errno, NULL);
	say(mctx, "filter_ppeek", filter_ppeek, 0, NULL);
	say(mctx, "same_event", ev_again == ev_req, 0, NULL);
	errno = 0;
	int r = mtcp_raise_event(mctx, ev_child);
	say(mctx, "raise", r, errno, NULL);
}

static void on_data(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)ev;
	(void)arg;
	if (!strcmp(mode, "unreg")) {
		say(mctx, "data_port", server_port(mctx, sock), 0, NULL);
	} else if (!strcmp(mode, "enodata")) {
		ppeek_say(mctx, "beyond", sock, side, 16, 1ull << 40);
		ppeek_say(mctx, "at_zero", sock, side, 4096, 0);
	} else if (!strcmp(mode, "eperm")) {
		int both = MOS_SIDE_BOTH;
		ppeek_say(mctx, "before_stop", sock, side, 4096, 0);
		int r = mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_STOP_MON, &both, sizeof(both));
		say(mctx, "stop_both", r, errno, NULL);
		ppeek_say(mctx, "after_stop", sock, side, 16, 0);
	} else if (!strcmp(mode, "gap")) {
		struct tcp_ring_fragment frags[8];
		socklen_t n = 8;
		char hex[128] = "";
		int opt = side == MOS_SIDE_SVR ? MOS_FRAGINFO_SVRBUF : MOS_FRAGINFO_CLIBUF;
		int r = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, opt, frags, &n);
		for (socklen_t i = 0; r == 0 && i < n && i < 4; i++)
			snprintf(hex + strlen(hex), sizeof(hex) - strlen(hex), "%s%llu+%u", i ? "," : "",
				 (unsigned long long)frags[i].offset, frags[i].len);
		say(mctx, "fragments", r == 0 ? (long)n : r, errno, hex);
		ppeek_say(mctx, "from_zero", sock, side, 4096, 0);
		ppeek_say(mctx, "in_gap", sock, side, 4096, 150);
		ppeek_say(mctx, "inside_ooo", sock, side, 4096, 250);
		ppeek_say(mctx, "ooo_start", sock, side, 4096, 200);
	}
}

static long slow_packets;

/* Sleeps 300 ms on every 40,000th packet. */
static void on_slow(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)mctx;
	(void)sock;
	(void)side;
	(void)ev;
	(void)arg;
	if (++slow_packets % 40000 == 0) {
		struct timespec ts = {0, 300 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

static void on_raw(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	char b[4];
	(void)side;
	(void)arg;
	if (ev != MOS_ON_PKT_IN || sock != rsock)
		return;
	raw_packets++;
	errno = 0;
	if (mtcp_ppeek(mctx, sock, MOS_SIDE_SVR, b, sizeof(b), 0) < 0)
		raw_errno = errno;
}

void mos_plugin_exit(mctx_t mctx)
{
	if (!strcmp(mode, "raw")) {
		say(mctx, "raw_packets", raw_packets, 0, NULL);
		say(mctx, "raw_ppeek", -1, raw_errno, NULL);
	}
}

static void on_end(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)mctx;
	(void)side;
	(void)ev;
	(void)arg;
	stale = sock;
}

int mos_plugin_init(mctx_t mctx, const char *config)
{
	char buf[8];
	const char *p = config ? strstr(config, "mode = ") : NULL;
	if (p)
		sscanf(p + 7, "%63s", mode);
	if (!strcmp(mode, "refuse"))
		return -1;
	errno = 0;
	init_ret = (int)mtcp_ppeek(mctx, 0, MOS_SIDE_SVR, buf, sizeof(buf), 0);
	init_errno = errno;
	lsock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0);
	if (lsock < 0)
		return -1;
	if (!strcmp(mode, "filter")) {
		union monitor_filter ft = {0};
		ft.stream_syn_filter = "tcp port 8080";
		if (mtcp_bind_monitor_filter(mctx, lsock, &ft) < 0)
			return -1;
	}
	if (!strcmp(mode, "slow") &&
	    mtcp_register_callback(mctx, lsock, MOS_ON_PKT_IN, MOS_HK_SND, on_slow) < 0)
		return -1;
	if (!strcmp(mode, "raw")) {
		rsock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0);
		if (rsock < 0 || mtcp_register_callback(mctx, rsock, MOS_ON_PKT_IN, MOS_NULL, on_raw) < 0)
			return -1;
	}
	if (!strcmp(mode, "ude")) {
		ev_req = mtcp_define_event(MOS_ON_CONN_NEW_DATA, is_request, &farg);
		ev_again = mtcp_define_event(MOS_ON_CONN_NEW_DATA, is_request, &farg);
		ev_child = mtcp_alloc_event(ev_req);
		if (!ev_req || !ev_child ||
		    mtcp_register_callback(mctx, lsock, ev_req, MOS_NULL, on_req) < 0 ||
		    mtcp_register_callback(mctx, lsock, ev_child, MOS_NULL, on_child) < 0)
			return -1;
	}
	if (!strcmp(mode, "badfilter")) {
		union monitor_filter ft = {0};
		ft.stream_syn_filter = "tcp port eighty";
		if (mtcp_bind_monitor_filter(mctx, lsock, &ft) < 0)
			return -1;
	}
	errno = 0;
	reg_ret = mtcp_register_callback(mctx, lsock, MOS_ON_CONN_NEW_DATA, MOS_HK_SND, on_data);
	reg_errno = errno;
	if (mtcp_register_callback(mctx, lsock, MOS_ON_CONN_START, MOS_HK_SND, on_start) < 0 ||
	    mtcp_register_callback(mctx, lsock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data) < 0 ||
	    mtcp_register_callback(mctx, lsock, MOS_ON_CONN_END, MOS_HK_SND, on_end) < 0)
		return -1;
	return 0;
}
