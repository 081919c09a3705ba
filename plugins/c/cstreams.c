/*
 * cstreams: what a reader of each direction of every TCP connection saw, as a C monitor
 * written for mos_api.h (mOS 0.3's monitoring API on flowpeek).
 *
 * On every MOS_ON_CONN_NEW_DATA it reads the side that grew with mtcp_peek (which moves this
 * monitor's position) and reads the same bytes again with mtcp_ppeek at that position (which
 * moves nothing), counting any difference; it CRC-32s the bytes. At each MOS_ON_CONN_END it
 * reads what is left, and at the second one (both sides ended) it emits one record:
 *
 *   {"uid":"f7adf8f1190065d4","client":"10.0.0.1:5555","server":"10.0.0.2:80",
 *    "c2s":{"bytes":120,"crc32":"1c291ca3","missing":0},
 *    "s2c":{"bytes":5000,"crc32":"...","missing":0},"ppeek_mismatch":0}
 *
 * `bytes` and `crc32` are what `flowpeek streams --json` reports for the connection;
 * `missing` counts bytes skipped over gaps (mtcp_peek's -n / ENODATA). `uid` is the flow id
 * of every flowpeek record (flowpeek_flow_info, an addition to mOS's API; null on a host
 * without it).
 *
 * Build:  cc -shared -fPIC -I plugin-api/c/include plugins/c/cstreams.c -o libcstreams.so
 * Config (cstreams.toml): buffer = 262144   (receive buffer per side, bytes)
 *                         filter = "tcp port 80"   (any tcpdump expression)
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <mos_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char mos_plugin_version[] = "1.0";

struct dir {
	uint64_t bytes;
	uint64_t missing;
	uint64_t off; /* this monitor's mtcp_peek position */
	uint32_t crc;
};

struct conn {
	char client[64];
	char server[64];
	char uid[24]; /* "\"16 hex\"" or null */
	struct dir d[2]; /* indexed by side: MOS_SIDE_SVR holds c2s bytes */
	int ends;
	uint64_t mismatch;
};

/* Callbacks of different cores run on different threads: per-thread scratch space. */
static __thread uint32_t crc_table[256];
static __thread int crc_ready;
static __thread char rbuf[65536];
static __thread char pbuf[65536];

static void crc_init(void)
{
	if (crc_ready)
		return;
	crc_ready = 1;
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc_add(uint32_t crc, const char *p, size_t n)
{
	crc_init();
	crc = ~crc;
	for (size_t i = 0; i < n; i++)
		crc = crc_table[(crc ^ (uint8_t)p[i]) & 0xff] ^ (crc >> 8);
	return ~crc;
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

static struct conn *conn_of(mctx_t mctx, int sock)
{
	struct conn *c = mtcp_get_uctx(mctx, sock);
	if (c)
		return c;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	format_addr(mctx, sock, MOS_SIDE_CLI, c->client, sizeof(c->client));
	struct flowpeek_flow_info info;
	if (flowpeek_flow_info(mctx, sock, &info) == 0)
		snprintf(c->uid, sizeof(c->uid), "\"%016" PRIx64 "\"", info.uid);
	else
		snprintf(c->uid, sizeof(c->uid), "null");
	format_addr(mctx, sock, MOS_SIDE_SVR, c->server, sizeof(c->server));
	mtcp_set_uctx(mctx, sock, c);
	return c;
}

/* Reads `side` to its end: mtcp_peek, then mtcp_ppeek of the same range to compare. */
static void drain(mctx_t mctx, int sock, int side, struct conn *c)
{
	struct dir *d = &c->d[side];
	for (;;) {
		ssize_t n = mtcp_peek(mctx, sock, side, rbuf, sizeof(rbuf));
		if (n == 0)
			return;
		if (n < 0) {
			/* -n with ENODATA: n bytes went before they were read; others end it. */
			if (errno != ENODATA)
				return;
			d->missing += (uint64_t)(-n);
			d->off += (uint64_t)(-n);
			continue;
		}
		ssize_t m = mtcp_ppeek(mctx, sock, side, pbuf, (size_t)n, d->off);
		if (m != n || memcmp(rbuf, pbuf, (size_t)n) != 0)
			c->mismatch++;
		d->crc = crc_add(d->crc, rbuf, (size_t)n);
		d->bytes += (uint64_t)n;
		d->off += (uint64_t)n;
	}
}

static void on_data(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)ev;
	(void)arg;
	struct conn *c = conn_of(mctx, sock);
	if (c && (side == MOS_SIDE_CLI || side == MOS_SIDE_SVR))
		drain(mctx, sock, side, c);
}

static void on_end(mctx_t mctx, int sock, int side, event_t ev, filter_arg_t *arg)
{
	(void)side;
	(void)ev;
	(void)arg;
	struct conn *c = conn_of(mctx, sock);
	char line[512];
	if (!c)
		return;
	drain(mctx, sock, MOS_SIDE_CLI, c);
	drain(mctx, sock, MOS_SIDE_SVR, c);
	if (++c->ends < 2)
		return;
	int n = snprintf(line, sizeof(line),
			 "{\"uid\":%s,\"client\":\"%s\",\"server\":\"%s\","
			 "\"c2s\":{\"bytes\":%llu,\"crc32\":\"%08x\",\"missing\":%llu},"
			 "\"s2c\":{\"bytes\":%llu,\"crc32\":\"%08x\",\"missing\":%llu},"
			 "\"ppeek_mismatch\":%llu}",
			 c->uid, c->client, c->server, (unsigned long long)c->d[MOS_SIDE_SVR].bytes,
			 c->d[MOS_SIDE_SVR].crc, (unsigned long long)c->d[MOS_SIDE_SVR].missing,
			 (unsigned long long)c->d[MOS_SIDE_CLI].bytes, c->d[MOS_SIDE_CLI].crc,
			 (unsigned long long)c->d[MOS_SIDE_CLI].missing,
			 (unsigned long long)c->mismatch);
	if (n > 0 && (size_t)n < sizeof(line))
		flowpeek_emit(mctx, line, (size_t)n);
	mtcp_set_uctx(mctx, sock, NULL);
	free(c);
}

int mos_plugin_init(mctx_t mctx, const char *config)
{
	int buffer = 262144;
	int sock;
	const char *p = config;
	while (p && *p) {
		int v;
		if (sscanf(p, " buffer = %d", &v) == 1)
			buffer = v;
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0);
	if (sock < 0)
		return -1;
	if (mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, &buffer, sizeof(buffer)) < 0 ||
	    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, &buffer, sizeof(buffer)) < 0)
		return -1;
	if (mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data) < 0)
		return -1;
	if (mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_SND, on_end) < 0)
		return -1;
	return 0;
}
