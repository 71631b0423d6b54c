#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "forwarder_socket.h"

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define BATCH 64
#define SIZE 65536        /* a GRO read can be a whole train */
#define MAX_GSO 65000     /* bytes in one GSO send, under the 65 507 of a UDP datagram */
#define MAX_SEGMENTS 64   /* segments in one GSO send (UDP_MAX_SEGMENTS of older kernels) */

/* forwarder_gso PORT A_PORT B_PORT [A_IP B_IP]: forwarder.c with UDP GRO on receive and
   UDP GSO on send, the way tailscale.com v1.102.5's relay batches: a train read whole
   goes out as one send with its segment size; a batch's datagrams are grouped by
   destination (in order within each), and a run of one size (the last may be shorter)
   goes out as one GSO send, gathered by iovecs. Source checked against the two client addresses as forwarder.c
   does. The user-space limit with both offloads (bench/dataplane.py, issue 17). */

struct group {
    struct sockaddr_in *to;
    size_t segment, bytes;
    int first_iov, iovs;
    int closed; /* a shorter last segment, or a train: nothing more joins */
};

static void set_segment(struct msghdr *header, char *control, uint16_t segment) {
    header->msg_control = control;
    header->msg_controllen = CMSG_SPACE(sizeof segment);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(header);
    cmsg->cmsg_level = SOL_UDP;
    cmsg->cmsg_type = UDP_SEGMENT;
    cmsg->cmsg_len = CMSG_LEN(sizeof segment);
    memcpy(CMSG_DATA(cmsg), &segment, sizeof segment);
}

static int gro_size(struct msghdr *header) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(header); c; c = CMSG_NXTHDR(header, c))
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int size;
            memcpy(&size, CMSG_DATA(c), sizeof size);
            return size;
        }
    return 0;
}

int main(int argc, char **argv) {
    struct sockaddr_in a, b;
    int status, one = 1;
    int fd = open_forwarder_socket(argc, argv, &a, &b, &status);
    if (fd < 0)
        return status;
    if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) < 0) {
        perror("UDP_GRO");
        return 1;
    }

    static char data[BATCH][SIZE];
    static char in_control[BATCH][CMSG_SPACE(sizeof(int))];
    static char out_control[BATCH][CMSG_SPACE(sizeof(uint16_t))];
    static struct iovec in_iov[BATCH], out_iov[BATCH];
    static struct sockaddr_in source[BATCH];
    static struct mmsghdr in[BATCH], out[BATCH];
    static struct group groups[BATCH];
    for (int i = 0; i < BATCH; i++) {
        in_iov[i] = (struct iovec){data[i], SIZE};
        in[i].msg_hdr.msg_iov = &in_iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &source[i];
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            in[i].msg_hdr.msg_namelen = sizeof source[i];
            in[i].msg_hdr.msg_control = in_control[i];
            in[i].msg_hdr.msg_controllen = sizeof in_control[i];
        }
        int n = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("recvmmsg");
            return 1;
        }
        /* Each datagram's destination, then the groups of each destination in turn (in
           order within it), as v1.102.5 groups a batch by destination. */
        static struct sockaddr_in *to[BATCH];
        for (int i = 0; i < n; i++) {
            in_addr_t ip = source[i].sin_addr.s_addr;
            if (source[i].sin_port == a.sin_port && ip == a.sin_addr.s_addr)
                to[i] = &b;
            else if (source[i].sin_port == b.sin_port && ip == b.sin_addr.s_addr)
                to[i] = &a;
            else
                to[i] = NULL;
        }
        int g = 0, iovs = 0;
        struct sockaddr_in *destinations[2] = {&b, &a};
        for (int d = 0; d < 2; d++) {
            struct group *open = NULL;
            for (int i = 0; i < n; i++) {
                if (to[i] != destinations[d])
                    continue;
                size_t size = in[i].msg_len;
                size_t train = (size_t)gro_size(&in[i].msg_hdr);
                out_iov[iovs] = (struct iovec){data[i], size};
                if (!train && open && !open->closed && size <= open->segment
                    && open->bytes + size <= MAX_GSO && open->iovs < MAX_SEGMENTS) {
                    open->bytes += size;
                    open->iovs++;
                    open->closed = size < open->segment;
                } else {
                    open = &groups[g++];
                    *open = (struct group){to[i], train && train < size ? train : size, size,
                                           iovs, 1, train != 0};
                }
                iovs++;
            }
        }
        for (int k = 0; k < g; k++) {
            struct msghdr *header = &out[k].msg_hdr;
            *header = (struct msghdr){.msg_name = groups[k].to,
                                      .msg_namelen = sizeof *groups[k].to,
                                      .msg_iov = &out_iov[groups[k].first_iov],
                                      .msg_iovlen = groups[k].iovs};
            if (groups[k].bytes > groups[k].segment)
                set_segment(header, out_control[k], (uint16_t)groups[k].segment);
        }
        for (int sent = 0; sent < g;) {
            int r = sendmmsg(fd, out + sent, g - sent, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                break; /* dropped, counted as loss by the bench */
            }
            sent += r;
        }
    }
}
