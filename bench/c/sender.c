#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* sender SRC_IP SRC_PORT DST_IP DST_PORT VNI SIZE COUNT RATE: COUNT Geneve data
   packets of SIZE bytes for VNI, sendmmsg in batches of 64, RATE packets/s on
   a fixed schedule (a late batch does not delay the next; 0: no pacing). */
int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: sender SRC_IP SRC_PORT DST_IP DST_PORT VNI SIZE COUNT RATE\n");
        return 2;
    }
    double rate = atof(argv[8]);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int buffer = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[4]))};
    inet_pton(AF_INET, argv[1], &src.sin_addr);
    inet_pton(AF_INET, argv[3], &dst.sin_addr);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) { perror("bind"); return 1; }
    unsigned vni = atoi(argv[5]);
    int size = atoi(argv[6]);
    long count = atol(argv[7]);
    static char data[65536];
    data[2] = 0x7a; data[3] = 0x12;
    data[4] = vni >> 16; data[5] = vni >> 8; data[6] = vni;
    static struct iovec iov[BATCH];
    static struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){data, size};
        msgs[i].msg_hdr = (struct msghdr){.msg_name = &dst, .msg_namelen = sizeof dst,
                                          .msg_iov = &iov[i], .msg_iovlen = 1};
    }
    long sent = 0;
    double start = now();
    while (sent < count) {
        if (rate > 0)
            while (now() - start < sent / rate)
                ;
        int n = count - sent < BATCH ? count - sent : BATCH;
        int r = sendmmsg(fd, msgs, n, 0);
        if (r > 0) sent += r;
    }
    printf("%ld %.6f\n", sent, now() - start);
    return 0;
}
