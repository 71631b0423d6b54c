/* The set-up both C forwarders share: their arguments and their one UDP socket.

   NAME PORT A_PORT B_PORT [A_IP B_IP]: relay between A_IP:A_PORT and B_IP:B_PORT. Without
   IPs: loopback only; with them: bound to any address. open_forwarder_socket() binds the
   socket, prints {"udp_port": N} (the bench reads it), and fills in the two clients; it
   returns the socket, or -1 after saying why (exit status 2 for bad arguments). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

static int open_forwarder_socket(int argc, char **argv, struct sockaddr_in *a,
                                 struct sockaddr_in *b, int *status) {
    *status = 2;
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: %s PORT A_PORT B_PORT [A_IP B_IP]\n", argv[0]);
        return -1;
    }
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    *a = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    *b = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    me.sin_addr.s_addr = a->sin_addr.s_addr = b->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (argc == 6) {
        me.sin_addr.s_addr = htonl(INADDR_ANY);
        if (inet_pton(AF_INET, argv[4], &a->sin_addr) != 1
            || inet_pton(AF_INET, argv[5], &b->sin_addr) != 1) {
            fprintf(stderr, "bad IPv4 address\n");
            return -1;
        }
    }
    *status = 1;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int buffer = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
        perror("bind");
        return -1;
    }
    socklen_t length = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &length);
    printf("{\"udp_port\": %d}\n", ntohs(me.sin_port));
    fflush(stdout);
    return fd;
}
