/*
 * sockfault.c - LD_PRELOAD fault injection for the integration tests: breaks
 * the gateway's broker connection at one exact PUBLISH, from inside the
 * process, so that a race the tests could otherwise only hit by chance
 * happens every time.
 *
 * The race: the broker goes away while paho is writing a QoS 1 PUBLISH, so
 * that the write itself fails (EPIPE) instead of the receive side noticing
 * the close first. That is what a broker stopped in the middle of a burst
 * does now and then; paho 1.3.12 mishandles it (gateway/mqtt.c).
 *
 *   R2M_SOCKFAULT_PUBLISH_N=N   the Nth first-time QoS 1/2 PUBLISH written
 *                               (DUP clear) finds its socket shut down, once
 *
 * The socket is really shut down (both directions) before the real writev
 * runs, so the write fails with EPIPE and the broker sees the connection
 * close: nothing is simulated past that point. One line on stderr says when
 * it fired. Without the variable this library does nothing.
 */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static ssize_t (*real_writev)(int, const struct iovec *, int);
static long fire_at;
static atomic_long publishes;

__attribute__((constructor)) static void sockfault_init(void)
{
    real_writev = (ssize_t(*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    const char *n = getenv("R2M_SOCKFAULT_PUBLISH_N");
    fire_at = n ? strtol(n, NULL, 10) : 0;
}

/* paho writes a PUBLISH as one writev whose first buffer is the fixed header. */
static int is_first_qos_publish(const struct iovec *iov, int n)
{
    if (n < 1 || iov[0].iov_len < 1)
        return 0;
    unsigned char h = ((const unsigned char *)iov[0].iov_base)[0];
    return (h & 0xF0) == 0x30 && (h & 0x06) != 0 && (h & 0x08) == 0;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    if (fire_at > 0 && is_first_qos_publish(iov, iovcnt) &&
        atomic_fetch_add(&publishes, 1) + 1 == fire_at) {
        shutdown(fd, SHUT_RDWR);
        fprintf(stderr, "sockfault: shut the broker socket down under PUBLISH #%ld\n", fire_at);
    }
    return real_writev(fd, iov, iovcnt);
}
