/*
 * LD_PRELOAD shim: Medooze's RTPBundleTransport binds its UDP socket to INADDR_ANY and has no
 * option for a bind address. Every server on this machine must bind loopback only, so this
 * rewrites bind() calls for AF_INET INADDR_ANY to the address in ILS_BIND_IP (default
 * 127.0.0.1). Any other bind() (AF_INET6, AF_PACKET, AF_UNIX, explicit addresses) is passed on
 * unchanged.
 *
 * Medooze also leaves SO_RCVBUF/SO_SNDBUF at the kernel default (208 KiB here) while the ils
 * engine asks for 8 MiB; for the same socket budget, a rewritten UDP socket gets ILS_SOCK_BUF
 * bytes (default 8 MiB, 0 = leave the default) for both, with the FORCE variants first (root).
 *
 * Build: cc -O2 -shared -fPIC -o bind_loopback.so bind_loopback.c -ldl
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

/* Default socket buffer for rewritten UDP sockets: 8 MiB (the ils engine's default). */
#define DEFAULT_SOCK_BUF (8 * 1024 * 1024)

static void grow_buffers(int fd)
{
	int type = 0;
	socklen_t tl = sizeof(type);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_DGRAM)
		return;
	const char *env = getenv("ILS_SOCK_BUF");
	long v = env ? strtol(env, NULL, 10) : DEFAULT_SOCK_BUF;
	if (v <= 0 || v > (1L << 30))
		return;
	int b = (int)v;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &b, sizeof(b)) != 0)
		(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &b, sizeof(b));
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &b, sizeof(b)) != 0)
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &b, sizeof(b));
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	static bind_fn real_bind;
	if (!real_bind) {
		real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
		if (!real_bind) {
			errno = ENOSYS;
			return -1;
		}
	}
	if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
		if (in->sin_addr.s_addr == htonl(INADDR_ANY)) {
			struct sockaddr_in copy;
			const char *ip = getenv("ILS_BIND_IP");
			memcpy(&copy, in, sizeof(copy));
			if (!ip || inet_pton(AF_INET, ip, &copy.sin_addr) != 1)
				copy.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			int rc = real_bind(fd, (const struct sockaddr *)&copy, sizeof(copy));
			if (rc == 0)
				grow_buffers(fd);
			return rc;
		}
	}
	return real_bind(fd, addr, len);
}
