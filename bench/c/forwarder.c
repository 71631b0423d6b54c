#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "forwarder_socket.h"

#define BATCH 64
#define SIZE 2048

/* forwarder PORT A_PORT B_PORT [A_IP B_IP]: relays every datagram from A_IP:A_PORT
   to B_IP:B_PORT and back; drops anything from elsewhere. Without IPs: loopback
   only; with them: bound to any address. */
int main(int argc, char **argv) {
    struct sockaddr_in a, b;
    int status;
    int fd = open_forwarder_socket(argc, argv, &a, &b, &status);
    if (fd < 0)
        return status;

    static char data[BATCH][SIZE];
    static struct iovec in_iov[BATCH], out_iov[BATCH];
    static struct sockaddr_in source[BATCH];
    static struct mmsghdr in[BATCH], out[BATCH];
    for (int i = 0; i < BATCH; i++) {
        in_iov[i] = (struct iovec){data[i], SIZE};
        in[i].msg_hdr.msg_iov = &in_iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &source[i];
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++)
            in[i].msg_hdr.msg_namelen = sizeof source[i];
        int n = recvmmsg(fd, in, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("recvmmsg");
            return 1;
        }
        int m = 0;
        for (int i = 0; i < n; i++) {
            struct sockaddr_in *to;
            in_addr_t ip = source[i].sin_addr.s_addr;
            if (source[i].sin_port == a.sin_port && ip == a.sin_addr.s_addr)
                to = &b;
            else if (source[i].sin_port == b.sin_port && ip == b.sin_addr.s_addr)
                to = &a;
            else
                continue;
            out_iov[m] = (struct iovec){data[i], in[i].msg_len};
            out[m].msg_hdr = (struct msghdr){
                .msg_name = to, .msg_namelen = sizeof *to, .msg_iov = &out_iov[m], .msg_iovlen = 1};
            m++;
        }
        for (int sent = 0; sent < m;) {
            int r = sendmmsg(fd, out + sent, m - sent, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                break; /* dropped, counted as loss by the bench */
            }
            sent += r;
        }
    }
}
