/* linkemu-fast: the delay half of linkemu.py, in C, for paths faster than
 * the Python emulator carries (~30 MB/s on the 2-core lab machines; this one
 * carries several times that, see BENCHMARKS.md "Issue 16").
 *
 * Joins two TAP devices that live in two network namespaces and copies
 * Ethernet frames between them after a fixed one-way delay, order kept.
 * Loss and rate limits are left to nftables (`numgen random`) and tbf.
 *
 *   linkemu-fast NS1 TAP1 NS2 TAP2 DELAY_US
 *
 * Built by integration/tools/wan_bench.py with `gcc -O2`. Stops on SIGTERM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 16384 /* frames queued per direction; more are dropped */
#define FRAME 1600  /* the TAPs keep the default MTU of 1500 */

struct slot { uint64_t due; uint16_t len; unsigned char data[FRAME]; };
struct queue { struct slot *s; unsigned head, tail; uint64_t dropped; };

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static uint64_t now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

static int open_tap(const char *ns, const char *dev) {
    char path[256];
    snprintf(path, sizeof path, "/run/netns/%s", ns);
    int orig = open("/proc/thread-self/ns/net", O_RDONLY);
    int nsfd = open(path, O_RDONLY);
    if (orig < 0 || nsfd < 0 || setns(nsfd, CLONE_NEWNET) < 0) { perror(path); exit(2); }
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (fd < 0) { perror("/dev/net/tun"); exit(2); }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(ifr.ifr_name, dev, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { perror(dev); exit(2); }
    if (setns(orig, CLONE_NEWNET) < 0) { perror("setns back"); exit(2); }
    close(nsfd);
    close(orig);
    return fd;
}

/* Reads every frame waiting on `in` into `q`, due `delay` from now. */
static void take(int in, struct queue *q, uint64_t delay) {
    for (;;) {
        struct slot *s = &q->s[q->tail % SLOTS];
        if (q->tail - q->head >= SLOTS) { /* full: read and drop */
            unsigned char junk[FRAME];
            if (read(in, junk, sizeof junk) <= 0) return;
            q->dropped++;
            continue;
        }
        ssize_t n = read(in, s->data, FRAME);
        if (n <= 0) return;
        s->len = (uint16_t)n;
        s->due = now_us() + delay;
        q->tail++;
    }
}

/* Writes the frames of `q` that are due; returns when the next one is due (0: none). */
static uint64_t give(int out, struct queue *q, uint64_t now) {
    while (q->head != q->tail) {
        struct slot *s = &q->s[q->head % SLOTS];
        if (s->due > now) return s->due;
        if (write(out, s->data, s->len) < 0 && errno == EAGAIN) return now + 50;
        q->head++;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s NS1 TAP1 NS2 TAP2 DELAY_US\n", argv[0]);
        return 2;
    }
    uint64_t delay = strtoull(argv[5], NULL, 10);
    int fa = open_tap(argv[1], argv[2]), fb = open_tap(argv[3], argv[4]);
    struct queue ab = {calloc(SLOTS, sizeof(struct slot)), 0, 0, 0};
    struct queue ba = {calloc(SLOTS, sizeof(struct slot)), 0, 0, 0};
    if (!ab.s || !ba.s) { perror("calloc"); return 2; }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    struct pollfd p[2] = {{fa, POLLIN, 0}, {fb, POLLIN, 0}};
    while (!stop) {
        uint64_t now = now_us();
        uint64_t n1 = give(fb, &ab, now), n2 = give(fa, &ba, now);
        uint64_t next = n1 && n2 ? (n1 < n2 ? n1 : n2) : (n1 ? n1 : n2);
        struct timespec ts = {1, 0};
        if (next) {
            uint64_t wait = next > now ? next - now : 0;
            ts.tv_sec = wait / 1000000u;
            ts.tv_nsec = (long)(wait % 1000000u) * 1000;
        }
        if (ppoll(p, 2, &ts, NULL) < 0 && errno != EINTR) { perror("ppoll"); return 1; }
        if (p[0].revents & POLLIN) take(fa, &ab, delay);
        if (p[1].revents & POLLIN) take(fb, &ba, delay);
    }
    fprintf(stderr, "linkemu-fast: dropped %llu (a->b) %llu (b->a) on full queues\n",
            (unsigned long long)ab.dropped, (unsigned long long)ba.dropped);
    return 0;
}
