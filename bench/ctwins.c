/* Modbus TCP twins in C for the benchmarks: N servers of the bench profile (P float32s), one thread.
 *
 * The Python twins (bench/twins.py) answer a few ten thousand requests a second and share the
 * machine's second core with the broker and the consumer; at saturation they, not the daemon,
 * set the pace. These answer function 3 and 4 reads from prepared float32 values that change at
 * every request, so the daemon's own limit can be measured (issue 13 compared against a C
 * simulator too). Anything else gets exception 1.
 *
 *   cc -O2 -o ctwins bench/ctwins.c -lm && ./ctwins 100    # prints the 100 ports as a JSON list
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONN 4096
#define BUF 4096

struct conn {
    int fd;
    size_t len;
    uint32_t k;
    unsigned char in[BUF];
};

static struct conn *conns[MAX_CONN * 4];

static void put_f32(unsigned char *out, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    u = htonl(u);
    memcpy(out, &u, 4);
}

/* Write all of buf; -1 when the client is gone (a bench client that does not read its replies). */
static int send_all(int fd, const unsigned char *buf, size_t len) {
    size_t sent = 0;
    while (sent < len) {
        ssize_t n = send(fd, buf + sent, len - sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        sent += (size_t)n;
    }
    return 0;
}

/* Answer every whole request in c->in; returns -1 when the connection is to be closed. */
static int serve(struct conn *c) {
    size_t pos = 0;
    unsigned char out[BUF];
    size_t olen = 0;
    while (c->len - pos >= 7) {
        unsigned char *h = c->in + pos;
        size_t plen = ((size_t)h[4] << 8) | h[5];
        if (plen < 2 || plen > 253) return -1;
        if (c->len - pos < 6 + plen) break;
        unsigned char fc = h[7];
        /* Address and count only where the frame holds them (plen 6): a shorter one ends before. */
        unsigned addr = plen == 6 ? (unsigned)(h[8] << 8) | h[9] : 0;
        unsigned count = plen == 6 ? (unsigned)(h[10] << 8) | h[11] : 0;
        if (olen + 9 + 250 > sizeof out) { /* flush, so that no whole request waits for more input */
            if (send_all(c->fd, out, olen) < 0) return -1;
            olen = 0;
        }
        unsigned char *o = out + olen;
        memcpy(o, h, 4); /* transaction and protocol id */
        o[6] = h[6];
        if ((fc == 3 || fc == 4) && plen == 6 && count >= 1 && count <= 125) {
            o[4] = 0;
            o[5] = (unsigned char)(3 + 2 * count);
            o[7] = fc;
            o[8] = (unsigned char)(2 * count);
            c->k++;
            /* Register pair i holds a float32 that moves at every request (as the twins' sine). */
            unsigned char regs[256];
            for (unsigned r = addr & ~1u; r < addr + count + 1; r += 2) {
                float v = 100.0f + (float)(r / 2) + 0.25f * (float)(c->k % 64);
                unsigned char b[4];
                put_f32(b, v);
                for (int j = 0; j < 4; j++) {
                    long at = (long)(r - addr) * 2 + j;
                    if (at >= 0 && at < (long)(2 * count)) regs[at] = b[j];
                }
            }
            memcpy(o + 9, regs, 2 * count);
            olen += 9 + 2 * count;
        } else {
            o[4] = 0;
            o[5] = 3;
            o[7] = fc | 0x80;
            o[8] = 1;
            olen += 9;
        }
        pos += 6 + plen;
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->len - pos);
        c->len -= pos;
    }
    return send_all(c->fd, out, olen);
}

int main(int argc, char **argv) {
    int devices = argc > 1 ? atoi(argv[1]) : 100;
    int ep = epoll_create1(0);
    int *listeners = calloc((size_t)devices, sizeof(int));
    printf("[");
    for (int i = 0; i < devices; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 64)) {
            perror("listen");
            return 1;
        }
        socklen_t al = sizeof a;
        getsockname(fd, (struct sockaddr *)&a, &al);
        listeners[i] = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)fd << 1};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        printf("%s%d", i ? ", " : "", ntohs(a.sin_port));
    }
    printf("]\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            int fd = (int)(tag >> 1);
            if (!(tag & 1)) { /* a listener */
                int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK);
                if (c < 0 || c >= MAX_CONN * 4) {
                    if (c >= 0) close(c);
                    continue;
                }
                int one = 1;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                conns[c] = calloc(1, sizeof(struct conn));
                conns[c]->fd = c;
                struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((uint64_t)c << 1) | 1};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                continue;
            }
            struct conn *c = conns[fd];
            ssize_t got = recv(fd, c->in + c->len, BUF - c->len, 0);
            if (got > 0) {
                c->len += (size_t)got;
                if (serve(c) == 0 && c->len < BUF) continue;
            } else if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            }
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            close(fd);
            free(c);
            conns[fd] = NULL;
        }
    }
}
