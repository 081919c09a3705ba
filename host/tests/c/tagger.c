/*
 * A C test monitor for the hot-reload tests: one "start" record per connection and one
 * "end" record per side, each tagged with this build's TAG (tagger_v2.c builds "v2").
 */
#include <arpa/inet.h>
#include <mos_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TAG
#define TAG "v1"
#endif

const char mos_plugin_version[] = TAG;

struct key {
	char flow[128];
	unsigned long long serial;
	int ends;
};

static void addr(mctx_t mctx, int sock, int side, char *out, size_t room)
{
	struct sockaddr_in6 a;
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
	snprintf(out, room, "%s:%u", ip, port);
}

static struct key *key_of(mctx_t mctx, int sock, int *made)
{
	struct key *k = mtcp_get_uctx(mctx, sock);
	struct pkt_info p;
	char c[64], s[64];
	*made = 0;
	if (k)
		return k;
	k = calloc(1, sizeof(*k));
	if (!k)
		return NULL;
	addr(mctx, sock, MOS_SIDE_CLI, c, sizeof(c));
	addr(mctx, sock, MOS_SIDE_SVR, s, sizeof(s));
	snprintf(k->flow, sizeof(k->flow), "%s>%s", c, s);
	if (mtcp_getlastpkt(mctx, sock, MOS_SIDE_CLI, &p) == 0)
		k->serial = (unsigned long long)p.ts_ns;
	mtcp_set_uctx(mctx, sock, k);
	*made = 1;
	return k;
}

static void emit_start(mctx_t mctx, struct key *k)
{
	char line[256];
	int n = snprintf(line, sizeof(line),
			 "{\"ev\":\"start\",\"tag\":\"" TAG "\",\"flow\":\"%s\",\"serial\":%llu}",
			 k->flow, k->serial);
	flowpeek_emit(mctx, line, (size_t)n);
}

static void on_start(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)side;
	(void)ev;
	(void)arg;
	int made;
	struct key *k = key_of(mctx, sock, &made);
	if (k && made)
		emit_start(mctx, k);
}

static void on_end(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)ev;
	(void)arg;
	int made;
	char line[256];
	struct key *k = key_of(mctx, sock, &made);
	if (!k)
		return;
	if (made)
		emit_start(mctx, k);
	int n = snprintf(line, sizeof(line),
			 "{\"ev\":\"end\",\"tag\":\"" TAG "\",\"flow\":\"%s\",\"serial\":%llu,"
			 "\"side\":\"%s\",\"reason\":\"end\"}",
			 k->flow, k->serial, side == MOS_SIDE_CLI ? "cli" : "svr");
	flowpeek_emit(mctx, line, (size_t)n);
	if (++k->ends == 2) {
		mtcp_set_uctx(mctx, sock, NULL);
		free(k);
	}
}

int mos_plugin_init(mctx_t mctx, const char *config)
{
	(void)config;
	int sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0);
	int zero = 0;
	if (sock < 0 ||
	    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, &zero, sizeof(zero)) < 0 ||
	    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, &zero, sizeof(zero)) < 0 ||
	    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, on_start) < 0 ||
	    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_SND, on_end) < 0)
		return -1;
	return 0;
}
