/*
 * The C template: an mOS-style monitor for flowpeek (plugins/template/README.md, "In C").
 * For every connection it counts the bytes each side sent, reading them with mtcp_peek on
 * every MOS_ON_CONN_NEW_DATA, and emits one record when the connection ends:
 *
 *   {"client":"10.0.0.1:5555","server":"10.0.0.2:80","c2s":120,"s2c":5000,"first":"GET "}
 *
 * Build:  cc -shared -fPIC -I plugin-api/c/include plugins/template/monitor.c -o libmonitor.so
 */
#include <arpa/inet.h>
#include <mos_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char mos_plugin_version[] = "0.1";

/* Per connection, kept with mtcp_set_uctx. */
struct conn {
	uint64_t sent[2]; /* by the side that received it: [MOS_SIDE_SVR] is what the client sent */
	char first[5];    /* the request's first bytes, read with mtcp_ppeek */
	int ends;
};

/* Callbacks of different cores run on different threads: per-thread scratch space. */
static __thread char buf[16384];

static void addr(mctx_t mctx, int sock, int side, char *out, size_t room)
{
	struct sockaddr_in6 a = {0};
	socklen_t len = sizeof(a);
	char ip[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (mtcp_getpeername(mctx, sock, (struct sockaddr *)&a, &len, side) == 0) {
		if (a.sin6_family == AF_INET6) {
			inet_ntop(AF_INET6, &a.sin6_addr, ip, sizeof(ip));
			port = ntohs(a.sin6_port);
		} else {
			struct sockaddr_in *v4 = (struct sockaddr_in *)&a;
			inet_ntop(AF_INET, &v4->sin_addr, ip, sizeof(ip));
			port = ntohs(v4->sin_port);
		}
	}
	snprintf(out, room, a.sin6_family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, port);
}

static struct conn *conn_of(mctx_t mctx, int sock)
{
	struct conn *c = mtcp_get_uctx(mctx, sock);
	if (!c) {
		c = calloc(1, sizeof(*c));
		mtcp_set_uctx(mctx, sock, c);
	}
	return c;
}

static void on_data(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)ev;
	(void)arg;
	struct conn *c = conn_of(mctx, sock);
	ssize_t n;
	if (!c)
		return;
	if (side == MOS_SIDE_SVR && !c->first[0])
		mtcp_ppeek(mctx, sock, side, c->first, 4, 0); /* offset 0: the first byte */
	/* Read everything new; -n with ENODATA means n bytes were lost (skipped). */
	while ((n = mtcp_peek(mctx, sock, side, buf, sizeof(buf))) != 0) {
		if (n < 0 && errno != ENODATA)
			break;
		if (n > 0)
			c->sent[side] += (uint64_t)n;
	}
}

static void on_end(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)side;
	(void)ev;
	(void)arg;
	struct conn *c = conn_of(mctx, sock);
	char cli[64], svr[64], line[256];
	if (!c || ++c->ends < 2) /* CONN_END comes once per side */
		return;
	for (int i = 0; i < 4; i++)
		if (c->first[i] < 0x20 || c->first[i] > 0x7e || c->first[i] == '"' || c->first[i] == '\\')
			c->first[i] = c->first[i] ? '.' : 0;
	addr(mctx, sock, MOS_SIDE_CLI, cli, sizeof(cli));
	addr(mctx, sock, MOS_SIDE_SVR, svr, sizeof(svr));
	int n = snprintf(line, sizeof(line),
			 "{\"client\":\"%s\",\"server\":\"%s\",\"c2s\":%llu,\"s2c\":%llu,\"first\":\"%s\"}",
			 cli, svr, (unsigned long long)c->sent[MOS_SIDE_SVR],
			 (unsigned long long)c->sent[MOS_SIDE_CLI], c->first);
	if (n > 0 && (size_t)n < sizeof(line))
		flowpeek_emit(mctx, line, (size_t)n);
	mtcp_set_uctx(mctx, sock, NULL);
	free(c);
}

/* Once per core: what an mOS program does after mtcp_create_context. Return -1 to refuse. */
int mos_plugin_init(mctx_t mctx, const char *config)
{
	(void)config; /* the text of monitor.toml, or NULL */
	int sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0);
	if (sock < 0)
		return -1;
	if (mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data) < 0 ||
	    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_SND, on_end) < 0)
		return -1;
	return 0;
}
